"""Submodels at their weight formats: each weight as the shipped GGUF file holds it.

A slice config's `weight_formats` gives every stored tensor a format (`matlab.plan.tensor_formats`,
by llama.cpp's rules: 1-D tensors in F32, fallbacks where rows are not whole blocks, ...). The
elastic submodel then runs with each weight replaced by its round trip through that format,
made by llama.cpp's own quantizer code (`matlab.formats.quantize`): the very numbers the file
holds, in the run's dtype.

A cache the size of the file. Each weight is quantized once per format, whole, and kept as the
file keeps it: its packed blocks (`packed`), at most that format's bytes, never a dequantized
copy of the model per format. A candidate's weights are dequantized when its forward pass
needs them (`weight`, called as each module runs: `matlab.core.formatted`) and dropped after,
so a search holds the packed formats and one module's weights at a time. Blocks run along a row
(a weight's input dimension), so the rows of a narrower gate/up projection are rows of the
packed tensor, and the columns of a narrower down projection cut at whole blocks are a prefix of
every packed row: a narrower FFN is a view of the packed tensor (`QuantizedWeight` states the
rule). A cut that splits blocks (a per-layer table whose layers' blocks are narrower than a
quantization block, as nano's 16-wide per-layer embeddings are: two layers share a 32-element
block, and skipping one changes what the other's block quantizes to) is quantized as cut, once
per distinct cut.

Tables read by token (`rows_only`: Gemma 3n's per-layer embedding table, 2.35G of E4B's 6.87G
text elements) are quantized for the token rows a run asks for (the calibration's, then any
others as they come), never whole: its blocks run along rows, so each row quantizes alone.
The token embedding is quantized whole: it is also the tied output layer.

Memory, measured (reports/benchmarks.md): the packed bytes of each format in use, plus, where
the originals are released (`release_originals`, a search over formats alone), no float copy of
the weights at all beyond the one module running.

Dequantizing is then the price of a candidate (on E4B on 2 cores, about 6 s of a 14.5 s
candidate). A search that has memory left gives it to `keep_dequantized(bytes)`: dequantized
weights are kept up to that many bytes and reused by the next candidates that hold the same
weight at the same format and width. Its rule suits a search, whose candidates run the layers in
the same order and mostly differ from the last one in a few places: a weight is kept when there
is room; at each new candidate (`next_candidate`) the kept weights the last candidate did not use
are dropped. (LRU would keep nothing useful: a forward pass reads more weights than fit, in a
cycle, so the least recently used is always the next one needed.)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from matlab.errors import FormatError
from matlab.formats.tensors import llama_fallback
from matlab.formats.types import block_shape, block_size, check_format, dequantize, fits, quantize
from matlab.progress import NO_PROGRESS, Progress

Ranges = tuple[tuple[int, int], ...]


class Cut(Protocol):
    """Which rows and columns of a weight a submodel keeps (a slice plan's `TensorSpec`)."""

    rows: Ranges | None
    cols: Ranges | None


CHUNK_ELEMENTS = 1 << 24  # rows quantized at a time: 64 MB of float32

# The format in which a run dtype holds its values exactly: that format's round trip is the identity.
EXACT_FORMATS = {torch.float32: ("f32",), torch.bfloat16: ("bf16", "f32"), torch.float16: ("f16", "f32")}


class FormatCache:
    """One loaded model's weights packed in weight formats, each made once; dequantized on demand."""

    def __init__(self, model: torch.nn.Module, rows_only: Iterable[str] = ()):
        self.model = model
        self.parameters = dict(model.named_parameters())
        self.rows_only = frozenset(rows_only)  # tables quantized by the rows asked for
        self._packed: dict[tuple[str, str], np.ndarray] = {}
        self._rows: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (sorted ids, their packed rows)
        self._cut: dict[tuple[str, str, Ranges, Ranges], np.ndarray] = {}
        self._released: set[str] = set()
        # Dequantized weights kept for the next candidates (`keep_dequantized`): key -> (tensor, candidate last used).
        self._kept: dict[tuple, tuple[torch.Tensor, int]] = {}
        self._kept_budget = 0
        self._kept_bytes = 0
        self._candidate = 0
        self.reuse = Counter()  # "hit" / "miss" of the kept weights
        self.seconds: Counter[str] = Counter()  # quantizing, per format, summed over threads
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # set when `prepare` is interrupted: its threads stop at a chunk

    # -- packing ------------------------------------------------------------------------------

    def _quantize(self, values: torch.Tensor, fmt: str) -> np.ndarray:
        """The packed rows of `values` in `fmt`, a chunk of rows at a time (a large table's float32
        copy is never made whole)."""
        started = time.perf_counter()
        rows = max(1, CHUNK_ELEMENTS // max(values.shape[-1], 1)) if values.ndim > 1 else len(values)
        pieces = []
        for start in range(0, max(len(values), 1), rows):
            if self._stopping.is_set():
                raise InterruptedError("quantization stopped")
            chunk = values[start:start + rows].detach().to("cpu", torch.float32).numpy()
            pieces.append(quantize(chunk, fmt))
        with self._lock:
            self.seconds[fmt] += time.perf_counter() - started
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def _original(self, name: str) -> torch.Tensor:
        if name in self._released:
            raise FormatError(f"{name}: its float values were released after packing; a cut that splits its blocks "
                              "cannot be quantized again (keep the originals: release_originals is for searches whose "
                              "cuts keep whole blocks)")
        return self.parameters[name]

    def packed(self, name: str, fmt: str) -> np.ndarray:
        """The whole tensor `name` as the file stores it in `fmt` (uint8 rows), made once."""
        key = (name, check_format(fmt))
        if key not in self._packed:
            if name in self.rows_only:
                raise FormatError(f"{name} is quantized by the rows a run reads (rows_only); ask for its rows")
            self._packed[key] = self._quantize(self._original(name), fmt)
        return self._packed[key]

    def nbytes(self) -> int:
        """Bytes the cache holds: packed weights, rows and cuts."""
        return (sum(array.nbytes for array in self._packed.values()) + sum(array.nbytes for array in self._cut.values())
                + sum(ids.nbytes + rows.nbytes for ids, rows in self._rows.values()))

    def prepare(self, formats: tuple[str, ...], progress: Progress = NO_PROGRESS, threads: int | None = None,
                release: Iterable[str] = ()) -> dict[str, float]:
        """Pack every 2-D weight (but the tables read by rows) in each of `formats` now (or, where
        its rows are not whole blocks of one, in the type llama.cpp falls back to), unless the
        format is the run dtype's own; wall seconds per format. A search calls it so that its
        candidates cost no quantization. Weights go through on `threads` threads (default:
        torch's; the quantizers release the GIL), one weight at a time each, in chunks of rows;
        progress is in millions of elements. The weights named in `release` give their float
        values up as soon as all their formats are packed (`release_originals`): memory peaks
        at the model or the packed formats, not their sum."""
        todo: dict[str, list[str]] = {}
        for name, parameter in self.parameters.items():
            if parameter.ndim != 2 or name in self.rows_only:
                continue
            stored = {fmt if fits(parameter.shape[-1], fmt) else llama_fallback(parameter.shape[-1], fmt)
                      for fmt in formats}
            todo[name] = sorted(fmt for fmt in stored if fmt not in EXACT_FORMATS.get(parameter.dtype, ()))
        total = sum(self.parameters[name].numel() * len(kinds) for name, kinds in todo.items())
        progress.start(total / 1e6, description=f"quantizing the weights to {', '.join(formats)} (M elements)")
        spent: Counter[str] = Counter()
        releasable = set(release)

        def pack(name: str) -> None:
            for fmt in todo[name]:
                started = time.perf_counter()
                self.packed(name, fmt)
                with self._lock:
                    spent[fmt] += time.perf_counter() - started
            if name in releasable and todo[name]:
                self.release_originals([name])

        pool = ThreadPoolExecutor(threads or torch.get_num_threads())
        started = time.perf_counter()
        try:
            jobs = {pool.submit(pack, name): self.parameters[name].numel() * len(kinds)
                    for name, kinds in todo.items()}
            for job in as_completed(jobs):
                job.result()
                progress.advance(jobs[job] / 1e6)
        except BaseException:
            # Ctrl-C (or a failure) must not wait minutes for the queued weights: drop them, and
            # the running ones stop at their next chunk.
            self._stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._stopping.clear()
            raise
        pool.shutdown()
        wall = time.perf_counter() - started
        # Wall seconds shared out by each format's share of the thread time (the formats ran together).
        busy = sum(spent.values()) or 1.0
        return {fmt: round(wall * spent.get(fmt, 0.0) / busy, 3) for fmt in formats if fmt in spent} or \
            {fmt: 0.0 for fmt in formats}

    def release_originals(self, names: Iterable[str]) -> int:
        """Replace the float values of `names` (packed in every format a run will ask for) with
        one-element stand-ins of their shape (strides 0): memory goes to the packed formats
        alone. Returns the bytes released. A cut that splits blocks can then no longer be made
        (FormatError)."""
        released = 0
        for name in names:
            parameter = self.parameters[name]
            if name in self._released:
                continue
            released += parameter.numel() * parameter.element_size()
            parameter.data = torch.zeros((), dtype=parameter.dtype, device=parameter.device).expand(parameter.shape)
            self._released.add(name)
        return released

    # -- reading ------------------------------------------------------------------------------

    def _splits(self, name: str, spec: Cut, fmt: str) -> bool:
        block = block_size(fmt)
        bounds = [bound for start, stop in (spec.cols or ()) for bound in (start, stop)]
        return self.parameters[name].shape[-1] % block != 0 or any(bound % block for bound in bounds)

    def keep_dequantized(self, budget: int) -> None:
        """Keep up to `budget` bytes of dequantized weights for the candidates to come (0: none)."""
        self._kept_budget = max(0, int(budget))
        if not self._kept_budget:
            self._kept.clear()
            self._kept_bytes = 0

    def next_candidate(self) -> None:
        """A new candidate starts: drop the kept weights the one before it did not use."""
        stale = [key for key, (_, used) in self._kept.items() if used < self._candidate]
        for key in stale:
            tensor, _ = self._kept.pop(key)
            self._kept_bytes -= tensor.numel() * tensor.element_size()
        self._candidate += 1

    def weight(self, name: str, spec: Cut, fmt: str, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """The kept rows and columns (`spec`) of tensor `name` as `fmt` holds them, dequantized now
        (run dtype and device unless given), or kept from an earlier candidate (`keep_dequantized`).
        Callers must not write into it."""
        parameter = self.parameters[name]
        dtype, device = dtype or parameter.dtype, torch.device(device or parameter.device)
        if not self._kept_budget:
            return self._dequantized(name, spec, fmt, dtype, device)
        key = (name, fmt, spec.rows or (), spec.cols or (), dtype, device)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept[key] = (found[0], self._candidate)
                self.reuse["hit"] += 1
                return found[0]
        values = self._dequantized(name, spec, fmt, dtype, device)
        size = values.numel() * values.element_size()
        with self._lock:
            self.reuse["miss"] += 1
            if self._kept_bytes + size <= self._kept_budget:
                self._kept[key] = (values, self._candidate)
                self._kept_bytes += size
        return values

    def _dequantized(self, name: str, spec: Cut, fmt: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        parameter = self.parameters[name]
        if self._splits(name, spec, fmt):
            key = (name, fmt, spec.rows or (), spec.cols or ())
            if key not in self._cut:
                original = self._original(name)
                rows = torch.cat([original[start:stop] for start, stop in spec.rows]) if spec.rows else original
                cut = torch.cat([rows[:, start:stop] for start, stop in spec.cols], dim=1) if spec.cols else rows
                self._cut[key] = self._quantize(cut, fmt)
            values = dequantize(self._cut[key], fmt)
        else:
            stored = self.packed(name, fmt)
            if spec.rows:
                stored = np.concatenate([stored[start:stop] for start, stop in spec.rows]) if len(spec.rows) > 1 \
                    else stored[spec.rows[0][0]:spec.rows[0][1]]
            if spec.cols:
                stored = _stored_columns(stored, parameter.shape[-1], spec.cols, fmt)
            values = dequantize(np.ascontiguousarray(stored), fmt)
        return torch.from_numpy(values).to(device=device, dtype=dtype)

    def whole(self, name: str, fmt: str) -> torch.Tensor:
        """The whole tensor `name` as `fmt` holds it, dequantized (itself where that is exact)."""
        parameter = self.parameters[name]
        if fmt in EXACT_FORMATS.get(parameter.dtype, ()):
            return parameter
        return self.weight(name, _WHOLE, fmt)

    def rows(self, name: str, fmt: str, token_ids: torch.Tensor, cols: Ranges | None = None,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """Rows `token_ids` (any shape) of a table read by rows, cut to columns `cols`, as `fmt`
        holds them: [*ids.shape, kept columns]. Rows not yet packed are quantized now, and kept;
        where the cut splits blocks of `fmt`, the cut rows are quantized as cut."""
        parameter = self.parameters[name]
        dtype = dtype or parameter.dtype
        flat = token_ids.detach().cpu().numpy().reshape(-1)
        if self._splits(name, _Whole(None, cols), fmt):
            original = self._original(name)[torch.from_numpy(flat).to(parameter.device)]
            cut = torch.cat([original[:, start:stop] for start, stop in cols], dim=1) if cols else original
            values = torch.from_numpy(dequantize(self._quantize(cut, fmt), fmt))
            return values.to(device=token_ids.device, dtype=dtype).reshape(*token_ids.shape, -1)
        key = (name, check_format(fmt))
        known, packed = self._rows.get(key, (np.empty(0, dtype=np.int64), None))
        missing = np.setdiff1d(np.unique(flat), known)
        if missing.size:
            new = self._quantize(self._original(name)[torch.from_numpy(missing).to(parameter.device)], fmt)
            known = np.concatenate([known, missing])
            packed = new if packed is None else np.concatenate([packed, new])
            order = np.argsort(known)
            known, packed = known[order], packed[order]
            self._rows[key] = (known, packed)
        stored = packed[np.searchsorted(known, flat)]
        if cols:
            stored = _stored_columns(stored, parameter.shape[-1], cols, fmt)
        values = torch.from_numpy(dequantize(np.ascontiguousarray(stored), fmt))
        return values.to(device=token_ids.device, dtype=dtype).reshape(*token_ids.shape, -1)


def _stored_columns(stored: np.ndarray, row_length: int, cols: Ranges, fmt: str) -> np.ndarray:
    """The stored form of columns `cols` (whole blocks) of rows of `row_length` elements: the
    same blocks of each stored row (bytes for block types, elements for f16 and f32)."""
    per_element = stored.shape[-1] / row_length  # stored units (bytes or elements) per element
    elements = block_shape(fmt)[0]
    unit = round(per_element * elements)  # stored units per block
    return np.concatenate([stored[:, start // elements * unit:stop // elements * unit] for start, stop in cols], axis=1)


@dataclass(frozen=True)
class _Whole:
    rows: Ranges | None = None
    cols: Ranges | None = None


_WHOLE = _Whole()


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A 2-D weight quantized once; each narrower MatFormer FFN is a view of it.

    `cut_axis` is the axis a narrower FFN cuts (the family's `ffn_cuts`: 0 for the gate and up
    projections, whose rows are neurons; 1 for the down projection, whose columns are). Cutting
    rows keeps whole rows, so any width is a view; cutting columns keeps a prefix of every row's
    blocks, so the width must be a multiple of the block (FormatError otherwise)."""

    format: str
    shape: tuple[int, int]
    cut_axis: int
    stored: np.ndarray  # read-only, gguf's stored form of the full tensor

    @classmethod
    def of(cls, weights: np.ndarray, format: str, cut_axis: int) -> QuantizedWeight:
        """Quantize the full `weights` ([rows, columns]) in `format`."""
        if weights.ndim != 2 or cut_axis not in (0, 1):
            raise FormatError(f"a FFN weight is 2-D and cut on axis 0 or 1, not shape {list(weights.shape)} cut on "
                              f"axis {cut_axis}")
        stored = quantize(weights, format)
        if np.shares_memory(stored, weights):  # f32 of a float32 array: gguf returns the input itself
            stored = stored.copy()
        stored.flags.writeable = False
        return cls(check_format(format), tuple(weights.shape), cut_axis, stored)

    def check_width(self, width: int) -> None:
        """FormatError unless a FFN of `width` neurons is a view of this tensor."""
        full = self.shape[self.cut_axis]
        if not 0 < width <= full:
            raise FormatError(f"width {width:,} is outside 1..{full:,}, the widths this tensor holds")
        if self.cut_axis == 1 and not fits(width, self.format):
            raise FormatError(f"width {width:,} is not a multiple of {self.format}'s block of "
                              f"{block_size(self.format)} elements; a narrower down projection keeps whole blocks "
                              "of each row, so use a multiple of the block")

    def narrowed(self, width: int) -> np.ndarray:
        """The stored form of the FFN of `width` neurons: a view, no copy."""
        self.check_width(width)
        if self.cut_axis == 0:
            return self.stored[:width]
        stored_columns = self.stored.shape[1] * width // self.shape[1]  # whole blocks: exact
        return self.stored[:, :stored_columns]

    def nbytes(self, width: int | None = None) -> int:
        """Bytes the (narrowed) tensor takes in the file."""
        return self.narrowed(width or self.shape[self.cut_axis]).nbytes

    def dequantized(self, width: int | None = None) -> np.ndarray:
        """float32 values of the (narrowed) tensor: bit-identical to quantizing the narrow
        tensor directly and dequantizing it."""
        return dequantize(self.narrowed(width or self.shape[self.cut_axis]), self.format)
