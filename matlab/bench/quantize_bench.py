"""The one-time cost of `search --formats`: every 2-D text weight of a checkpoint through each
format's reference quantizer and back (`matformer bench quantize`).

The search does this once per format before its first candidate and keeps the results; here
each tensor is read, round-tripped and dropped, in the row chunks the search's cache uses, so
a full-size E4B is measured in bounded memory (the search itself holds one dequantized copy of
the text weights per format).
"""

from __future__ import annotations

import time

import numpy as np
from safetensors import safe_open

from matlab.arch.facts import facts_from_checkpoint
from matlab.formats import fits, round_trip
from matlab.formats.cache import CHUNK_ELEMENTS
from matlab.io.reader import CheckpointFiles
from matlab.io.resolve import resolve_checkpoint
from matlab.progress import NO_PROGRESS, Progress


def bench_quantize(checkpoint: str, formats: tuple[str, ...], progress: Progress = NO_PROGRESS) -> dict:
    """Seconds and elements per second of each format's round trip over the text weights."""
    directory = resolve_checkpoint(checkpoint)
    facts = facts_from_checkpoint(directory)
    files = CheckpointFiles(directory)
    text = [(name, info) for name, info in files.tensors.items()
            if len(info.shape) == 2 and facts.family.text_only_name(name, facts.is_multimodal) is not None]
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
                if not fits(columns, fmt):
                    continue
                started = time.perf_counter()
                result = round_trip(values, fmt)
                seconds[fmt] += time.perf_counter() - started
                elements[fmt] += values.size
                del result
        progress.advance()
    return {"checkpoint": str(checkpoint), "tensors": len(text), "read_seconds": round(read, 2),
            "formats": {fmt: {"seconds": round(seconds[fmt], 2), "elements": elements[fmt],
                              "million_elements_per_second": round(elements[fmt] / max(seconds[fmt], 1e-9) / 1e6, 1)}
                        for fmt in formats}}


def numpy_threads_note() -> str:
    return f"numpy {np.__version__}, single-threaded (gguf's quantizers are numpy code)"
