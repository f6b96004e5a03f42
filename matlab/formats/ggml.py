"""ggml's own quantizers: the C code llama.cpp runs when it writes a GGUF, called through ctypes.

Why this and not the `gguf` package alone: gguf's numpy quantizers exist for the 32-element
block types only (the K-quants it can dequantize, not quantize), and they run at 45-68 s a
format for E4B's text weights on 2 cores. ggml's `ggml_quantize_chunk` is the function
llama-quantize calls; with no importance matrix it runs each type's `quantize_row_*_ref`, so its
bytes are llama.cpp's by construction (compared with llama.cpp itself where its environment is
installed: tests/test_kquants.py and tests/test_runtimes_real.py). The library comes prebuilt in
the `libggml-python` wheel (Linux x86_64 and aarch64, macOS arm64): nothing to compile.
`ggml-python`, the Python binding, binds the same function but is an sdist that compiles ggml
on install; the prebuilt wheel makes that compile unnecessary, so it was not measured.

Why not a port of our own in torch: the reference K-quant search is the cost (q4_k's
`make_qkx2_quants` tries 21 scales per 32-element sub-block, about 200 flops an element), so a
vectorized port on these 2 cores would at best match the C (q4_k: 200 s for E4B's text weights,
reports/benchmarks.md), and it would need proving byte-identical on every CPU; only a GPU would
gain, and a GPU run was not available to measure it. An AVX2 build of the same C (llama.cpp's
own libggml-base) was measured 1.76x faster on q4_k with identical bytes; the wheel's portable
build is what users get. On x86-64 the reference functions contain no fused multiply-adds, so
the bytes do not depend on the CPU; on aarch64 both this build and llama.cpp's let the compiler
contract, which was not measured here.

Calls release the GIL (ctypes), so rows are quantized on threads: `quantize(..., threads=N)`.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from matlab.errors import FormatError

# Rows per call: enough to amortize the call, few enough to spread over threads.
CHUNK_ELEMENTS = 1 << 22
# The dequantizers ggml exports per type (its type traits' `to_float`).
_DEQUANTIZERS = {"q8_0": "dequantize_row_q8_0", "q5_1": "dequantize_row_q5_1", "q5_0": "dequantize_row_q5_0",
                 "q4_1": "dequantize_row_q4_1", "q4_0": "dequantize_row_q4_0", "q2_k": "dequantize_row_q2_K",
                 "q3_k": "dequantize_row_q3_K", "q4_k": "dequantize_row_q4_K", "q5_k": "dequantize_row_q5_K",
                 "q6_k": "dequantize_row_q6_K"}


@functools.cache
def library() -> ctypes.CDLL:
    """ggml's base library from the libggml-python wheel; FormatError saying how to get it."""
    try:
        import libggml
    except ImportError:
        raise FormatError("the K-quants are quantized by ggml's own code, from the libggml-python wheel, which is "
                          "not installed: pip install libggml-python (wheels for Linux x86_64/aarch64 and macOS "
                          "arm64)") from None
    folder = Path(libggml.__file__).parent
    found = sorted(path for pattern in ("lib*/libggml-base.so", "lib*/libggml-base.dylib", "lib*/ggml-base.dll")
                   for path in folder.glob(pattern))
    if not found:
        raise FormatError(f"libggml-python in {folder} holds no ggml-base library; reinstall it")
    lib = ctypes.CDLL(str(found[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    for name in _DEQUANTIZERS.values():
        function = getattr(lib, name)
        function.restype = None
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _type_id(format: str) -> int:
    from gguf import GGMLQuantizationType  # the same enumeration as ggml's `enum ggml_type`

    return GGMLQuantizationType[format.upper()].value


def _rows(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).reshape(-1, values.shape[-1] if values.ndim else 1)


def quantize(values: np.ndarray, format: str, threads: int | None = None) -> np.ndarray:
    """float32 `values` as the uint8 rows a GGUF file stores in `format` ([..., row bytes])."""
    lib, type_id = library(), _type_id(format)
    if lib.ggml_quantize_requires_imatrix(type_id):
        raise FormatError(f"{format} needs an importance matrix, which these searches do not compute")
    rows = _rows(values)
    count, length = rows.shape
    row_bytes = lib.ggml_row_size(type_id, length)
    stored = np.empty((count, row_bytes), dtype=np.uint8)
    step = max(1, CHUNK_ELEMENTS // max(length, 1))

    def chunk(start: int) -> None:
        stop = min(count, start + step)
        lib.ggml_quantize_chunk(type_id, rows[start:stop].ctypes.data, stored[start:stop].ctypes.data, 0,
                                stop - start, length, None)

    _run(chunk, range(0, count, step), threads)
    return stored.reshape(*values.shape[:-1], row_bytes)


def dequantize(stored: np.ndarray, format: str, threads: int | None = None) -> np.ndarray:
    """The float32 values of `stored` rows of `format` (ggml's own dequantizer), on threads."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    function = getattr(library(), _DEQUANTIZERS[format])
    elements, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[format.upper()]]
    rows = np.ascontiguousarray(stored, dtype=np.uint8).reshape(-1, stored.shape[-1] if stored.ndim else 1)
    length = rows.shape[-1] // nbytes * elements
    values = np.empty((len(rows), length), dtype=np.float32)
    step = max(1, CHUNK_ELEMENTS // max(length, 1))

    def chunk(start: int) -> None:
        stop = min(len(rows), start + step)
        function(rows[start:stop].ctypes.data, values[start:stop].ctypes.data, (stop - start) * length)

    _run(chunk, range(0, len(rows), step), threads)
    return values.reshape(*stored.shape[:-1], length)


def _run(chunk, starts: range, threads: int | None) -> None:
    """`chunk(start)` for each start, on `threads` threads (default: one per core)."""
    workers = min(threads or os.cpu_count() or 1, len(starts))
    if workers <= 1:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(chunk, starts))
