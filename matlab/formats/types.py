"""GGUF weight formats: their names, the exact bytes a tensor takes in each, and the round trip
through the `gguf` package's reference quantizers.

Which formats. Only the GGUF types the `gguf` package (llama.cpp's own gguf-py) can both
quantize and dequantize on the CPU, so that the quality of a submodel at its format is measured
on the very numbers the file holds: f32, f16, bf16 and the 32-element block types q8_0, q5_1,
q5_0, q4_1 and q4_0 (`gguf.quants` implements llama.cpp's `quantize_row_*_ref` for them; with no
importance matrix, `llama-quantize` runs the same reference code, so its bytes are these).
llama.cpp, and the runtimes built on it (llama-cpp-python, Ollama), load all of them.
Left out, and refused by name: the K-quants (q2_k..q6_k, and the q4_k_m style file types that
mix them) and the i-quants, which gguf can only dequantize (llama.cpp alone quantizes them, and
they need rows divisible by 256); tq1_0/tq2_0, ternary types for models trained ternary
(BitNet), which they would wreck otherwise; and mxfp4, which llama.cpp writes only for
checkpoints that arrive in MXFP4 (gpt-oss's experts).

Blocks run along a tensor's last dimension (a row, the input dimension of a weight): a row of
`n` elements takes `n / block * bytes_per_block` bytes, block scales included, and a row that is
not whole blocks cannot be stored. Rows quantize independently and blocks within a row too, so
a narrower MatFormer FFN is a view of the fully quantized tensor (`matlab.formats.cache`): any
prefix of the rows (gate/up projections), or a prefix of every row's blocks (the down
projection, when its width is a multiple of the block).

`gguf` is imported inside the functions that need it: slice configs check format names with
`FORMATS` alone, so loading one costs no import of the package.
"""

from __future__ import annotations

import importlib
import re
from math import prod
from typing import TYPE_CHECKING

import numpy as np

from matlab.errors import FormatError, shown_value

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

# The formats offered, widest first, each with the module that quantizes it (imported when
# first used: slice configs check names with `FORMATS` alone). Each name is the
# GGMLQuantizationType member of that name, lower-cased; a module holds `quantize(values,
# format)` and `dequantize(stored, format)`. Adding a format is its module (or a name in an
# existing one) and one line here; docs/contributing.md walks through it.
IMPLEMENTATIONS = {
    "f32": "matlab.formats.reference",
    "f16": "matlab.formats.reference",
    "bf16": "matlab.formats.reference",
    "q8_0": "matlab.formats.reference",
    "q5_1": "matlab.formats.reference",
    "q5_0": "matlab.formats.reference",
    "q4_1": "matlab.formats.reference",
    "q4_0": "matlab.formats.reference",
}
FORMATS = tuple(IMPLEMENTATIONS)
FLOAT_FORMATS = ("f32", "f16", "bf16")
# GGUF types (and llama.cpp file types such as q4_k_m) that are not offered, and why.
_NOT_OFFERED = (
    (re.compile(r"i?q[1-8]_(k|xx?s|s|m|nl)(_[a-z]+)?|q8_1|q1_0|nvfp4"),
     "has no reference quantizer in the gguf package (llama.cpp alone quantizes it), so quality at that format "
     "cannot be measured"),
    (re.compile(r"tq[12]_0"), "is a ternary type for models trained ternary (BitNet); it would wreck these weights"),
    (re.compile(r"mxfp4"), "is written by llama.cpp only for checkpoints that arrive in MXFP4 (gpt-oss's experts)"),
)


def check_format(name: object) -> str:
    """The format `name` names (any case), or FormatError saying why it is not one."""
    if not isinstance(name, str):
        raise FormatError(f"{shown_value(name)} is not a format name; use one of {', '.join(FORMATS)}")
    lowered = name.strip().lower()
    if lowered in FORMATS:
        return lowered
    for pattern, reason in _NOT_OFFERED:
        if pattern.fullmatch(lowered):
            raise FormatError(f"{shown_value(name)} {reason}; use one of {', '.join(FORMATS)}")
    raise FormatError(f"{shown_value(name)} is not a GGUF weight format; use one of {', '.join(FORMATS)}")


def ggml_type(format: str) -> GGMLQuantizationType:
    """gguf's type for a format name."""
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[check_format(format).upper()]


def block_shape(format: str) -> tuple[int, int]:
    """(elements per block, bytes per block) of a format, as gguf states them (f16: (1, 2))."""
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[ggml_type(format)]


def block_size(format: str) -> int:
    """Elements per block: a row must be a whole number of them."""
    return block_shape(format)[0]


def fits(row_length: int, format: str) -> bool:
    """Whether a row of `row_length` elements is whole blocks of `format`."""
    return row_length % block_size(format) == 0


def row_bytes(row_length: int, format: str) -> int:
    """Bytes of one row of `row_length` elements, block scales included."""
    elements, nbytes = block_shape(format)
    if row_length % elements:
        raise FormatError(f"a row of {row_length:,} elements is not whole {format} blocks of {elements}; "
                          f"{format} stores rows whose length is a multiple of {elements}")
    return row_length // elements * nbytes


def tensor_bytes(shape: tuple[int, ...], format: str) -> int:
    """Exact bytes of a tensor's data in `format`; blocks run along the last dimension."""
    if not shape:
        return row_bytes(1, format)
    return prod(shape[:-1]) * row_bytes(shape[-1], format)


def _implementation(format: str):
    return importlib.import_module(IMPLEMENTATIONS[check_format(format)])


def quantize(weights: np.ndarray, format: str) -> np.ndarray:
    """`weights` in the stored form of `format` a GGUF file holds (what GGUFWriter writes): uint8
    blocks, bf16 as uint8 pairs, f16 and f32 as elements."""
    if weights.ndim and not fits(weights.shape[-1], format):
        row_bytes(weights.shape[-1], format)  # raises, naming the row length and the block
    return _implementation(format).quantize(np.asarray(weights, dtype=np.float32), format)


def dequantize(stored: np.ndarray, format: str) -> np.ndarray:
    """The float32 values a stored tensor holds; a new array."""
    values = _implementation(format).dequantize(stored, format)
    return values.copy() if np.shares_memory(values, stored) else values


def round_trip(weights: np.ndarray, format: str) -> np.ndarray:
    """`weights` as a file in `format` holds them: quantized by the reference quantizer and back."""
    return dequantize(quantize(weights, format), format)


