"""The one-time cost of `search --formats`: every 2-D text weight a search packs, through each
format's quantizer (`matformer bench quantize`).

The search packs each weight once per format before its first candidate (`FormatCache.prepare`);
the per-layer embedding table is packed by the token rows a run reads, never whole, so it is left
out here as it is there. Each tensor is read and quantized in the row chunks the cache uses, on
the machine's threads (ggml's quantizers release the GIL), and dropped: a full-size E4B is
measured in bounded memory. Seconds are wall seconds per format; reading is counted apart.
"""

from __future__ import annotations

import os
import time

import numpy as np
from safetensors import safe_open

from matlab.arch.facts import facts_from_checkpoint
from matlab.formats import fits, quantize
from matlab.formats.cache import CHUNK_ELEMENTS
from matlab.formats.tensors import llama_fallback
from matlab.io.reader import CheckpointFiles
from matlab.io.resolve import resolve_checkpoint
from matlab.progress import NO_PROGRESS, Progress


def bench_quantize(checkpoint: str, formats: tuple[str, ...], progress: Progress = NO_PROGRESS) -> dict:
    """Wall seconds and elements per second of packing the search's weights in each format."""
    directory = resolve_checkpoint(checkpoint)
    facts = facts_from_checkpoint(directory)
    files = CheckpointFiles(directory)
    table = facts.text_prefix + facts.family.ple_table
    text = [(name, info) for name, info in files.tensors.items()
            if len(info.shape) == 2 and facts.family.text_only_name(name, facts.is_multimodal) is not None
            and name != table]
    seconds = dict.fromkeys(formats, 0.0)
    elements = dict.fromkeys(formats, 0)
    read = 0.0
    progress.start(len(text), description="quantizing")
    for name, info in text:
        rows, columns = info.shape
        step = max(1, CHUNK_ELEMENTS // columns)  # as the search's cache goes through a large table
        for start in range(0, rows, step):
            started = time.perf_counter()
            with safe_open(info.file, framework="pt") as handle:
                values = handle.get_slice(name)[start:start + step].float().numpy()
            read += time.perf_counter() - started
            for fmt in formats:
                stored = fmt if fits(columns, fmt) else llama_fallback(columns, fmt)
                started = time.perf_counter()
                quantize(values, stored)
                seconds[fmt] += time.perf_counter() - started
                elements[fmt] += values.size
        progress.advance()
    return {"checkpoint": str(checkpoint), "tensors": len(text), "read_seconds": round(read, 2),
            "threads": os.cpu_count(),
            "formats": {fmt: {"seconds": round(seconds[fmt], 2), "elements": elements[fmt],
                              "million_elements_per_second": round(elements[fmt] / max(seconds[fmt], 1e-9) / 1e6, 1)}
                        for fmt in formats}}


def numpy_threads_note() -> str:
    return (f"ggml's quantizers on {os.cpu_count()} threads (the 32-element types fall back to gguf's numpy where "
            f"libggml is missing; numpy {np.__version__})")
