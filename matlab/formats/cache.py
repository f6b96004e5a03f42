"""Submodels at their weight formats: each weight as the shipped GGUF file holds it.

A slice config's `weight_formats` gives every stored tensor a format (`matlab.plan.tensor_formats`,
by llama.cpp's converter's rules: 1-D tensors in F32, rows off the block in F16, ...). The
elastic submodel then runs with each weight replaced by its round trip through that format,
computed by the `gguf` package's reference quantizers (`matlab.formats.round_trip`): the very
numbers the file holds, in the run's dtype.

Each weight is quantized once per format, whole, and kept dequantized (`FormatCache`), so a
candidate of a search costs no quantization: blocks run along a row (a weight's input
dimension), so the rows of a narrower gate/up projection, and the columns of a narrower down
projection cut at whole blocks, are views of the whole tensor's round trip. A cut that splits
blocks (a per-layer table whose layers' blocks are narrower than a quantization block, as
nano's 16-wide per-layer embeddings are: two layers share a 32-element block, and skipping
one changes what the other's block quantizes to) is quantized as cut, once per distinct cut.

Memory: one dequantized copy of the text weights per format in use, at the run's dtype.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from matlab.errors import FormatError
from matlab.formats.types import block_size, check_format, dequantize, fits, quantize, round_trip
from matlab.progress import NO_PROGRESS, Progress

Ranges = tuple[tuple[int, int], ...]


class Cut(Protocol):
    """Which rows and columns of a weight a submodel keeps (a slice plan's `TensorSpec`)."""

    rows: Ranges | None
    cols: Ranges | None

CHUNK_ELEMENTS = 1 << 24  # rows round-tripped at a time: 64 MB of float32

# The format in which a run dtype holds its values exactly: that format's round trip is the identity.
EXACT_FORMATS = {torch.float32: ("f32",), torch.bfloat16: ("bf16", "f32"), torch.float16: ("f16", "f32")}


class FormatCache:
    """Round trips of one loaded model's weights through weight formats, computed once each."""

    def __init__(self, model: torch.nn.Module):
        self.parameters = dict(model.named_parameters())
        self._whole: dict[tuple[str, str], torch.Tensor] = {}
        self._cut: dict[tuple[str, str, Ranges, Ranges], torch.Tensor] = {}
        self.seconds: Counter[str] = Counter()  # quantizing (and back), per format, summed over threads
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # set when `prepare` is interrupted: its threads stop at a chunk

    def _round_trip(self, values: torch.Tensor, fmt: str) -> torch.Tensor:
        """`values` through `fmt` and back, in the run's dtype and device. Rows quantize
        independently, so a large table goes through in chunks of rows: memory is the result
        plus one chunk per thread (E4B's per-layer table is 2.3G elements)."""
        started = time.perf_counter()
        result = torch.empty_like(values, device=values.device)
        rows = max(1, CHUNK_ELEMENTS // max(values.shape[-1], 1)) if values.ndim > 1 else len(values)
        for start in range(0, max(len(values), 1), rows):
            if self._stopping.is_set():
                raise InterruptedError("quantization stopped")
            chunk = values[start:start + rows].detach().to("cpu", torch.float32).numpy()
            result[start:start + rows] = torch.from_numpy(np.ascontiguousarray(round_trip(chunk, fmt)))
        with self._lock:
            self.seconds[fmt] += time.perf_counter() - started
        return result

    def whole(self, name: str, fmt: str) -> torch.Tensor:
        """The whole tensor `name` as format `fmt` holds it (itself where that is exact)."""
        parameter = self.parameters[name]
        if fmt in EXACT_FORMATS.get(parameter.dtype, ()):
            return parameter
        key = (name, fmt)
        if key not in self._whole:
            self._whole[key] = self._round_trip(parameter, fmt)
        return self._whole[key]

    def prepare(self, formats: tuple[str, ...], progress: Progress = NO_PROGRESS,
                threads: int | None = None) -> dict[str, float]:
        """Quantize every 2-D weight in each of `formats` now (where its rows are whole blocks);
        wall seconds per format. A search calls it so that its candidates cost no quantization.
        gguf's quantizers are numpy code on the CPU, one tensor at a time: weights go through on
        `threads` threads (default: torch's), numpy releasing the GIL in its array work. On a
        full-size model this is still minutes, so it reports progress in millions of elements."""
        todo = [(fmt, name, parameter) for fmt in formats for name, parameter in self.parameters.items()
                if parameter.ndim == 2 and parameter.shape[-1] % block_size(fmt) == 0]
        progress.start(sum(parameter.numel() for *_, parameter in todo) / 1e6,
                       description=f"quantizing the weights to {', '.join(formats)} (M elements)")
        seconds = {}
        pool = ThreadPoolExecutor(threads or torch.get_num_threads())
        try:
            for fmt in formats:
                progress.describe(f"quantizing the weights to {fmt} (M elements)")
                started = time.perf_counter()
                jobs = {pool.submit(self.whole, name, fmt): parameter.numel()
                        for each, name, parameter in todo if each == fmt}
                for job in as_completed(jobs):
                    job.result()
                    progress.advance(jobs[job] / 1e6)
                seconds[fmt] = round(time.perf_counter() - started, 3)
        except BaseException:
            # Ctrl-C (or a failure) must not wait minutes for the queued weights: drop them, and
            # the running ones stop at their next chunk.
            self._stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._stopping.clear()
            raise
        pool.shutdown()
        return seconds

    def weight(self, name: str, spec: Cut, fmt: str) -> tuple[torch.Tensor, bool]:
        """(tensor, cut): the whole tensor's round trip, for the caller to cut by `spec` as it
        cuts the model's own (cut False); or, where `spec` splits blocks of `fmt`, the cut
        tensor's own round trip (cut True)."""
        parameter = self.parameters[name]
        block = block_size(fmt)
        bounds = [bound for start, stop in (spec.cols or ()) for bound in (start, stop)]
        if parameter.shape[-1] % block == 0 and all(bound % block == 0 for bound in bounds):
            return self.whole(name, fmt), False
        key = (name, fmt, spec.rows or (), spec.cols or ())
        if key not in self._cut:
            rows = torch.cat([parameter[start:stop] for start, stop in spec.rows]) if spec.rows else parameter
            cut = torch.cat([rows[:, start:stop] for start, stop in spec.cols], dim=1) if spec.cols else rows
            self._cut[key] = cut if fmt in EXACT_FORMATS.get(parameter.dtype, ()) else self._round_trip(cut, fmt)
        return self._cut[key], True


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
