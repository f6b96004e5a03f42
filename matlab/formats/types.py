"""GGUF weight formats: their names, the exact bytes a tensor takes in each, and the round trip
a tensor makes through each (quantized the way llama.cpp quantizes it, and back).

Which formats. The GGUF types llama.cpp writes from a float checkpoint with no importance
matrix, quantized by llama.cpp's own reference code, so that the quality of a submodel at its
format is measured on the very numbers the file holds: f32, f16, bf16; the 32-element block
types q8_0, q5_1, q5_0, q4_1, q4_0; and the K-quants q6_k, q5_k, q4_k, q3_k, q2_k (256-element
super-blocks), the types llama.cpp's presets (Q4_K_M and kin, `matlab.formats.presets`) mix.
The block types are quantized by ggml's own `ggml_quantize_chunk` (`matlab.formats.ggml`: the
function llama-quantize calls), where its library is installed, and the 32-element ones else by
the `gguf` package's numpy ports of the same code (`matlab.formats.reference`; the two give the
same bytes, tested). llama.cpp, and the runtimes built on it (llama-cpp-python, Ollama), load
all of them. Refused by name: the i-quants (iq2_xxs, iq4_xs, ...), which need an importance
matrix or have no reference quantizer; tq1_0/tq2_0, ternary types for models trained ternary
(BitNet), which they would wreck otherwise; mxfp4, which llama.cpp writes only for checkpoints
that arrive in MXFP4 (gpt-oss's experts); and the presets' names, which are file types (a type
per tensor), not one tensor's format.

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
import importlib.util
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
    "q8_0": "matlab.formats.ggml",
    "q6_k": "matlab.formats.ggml",
    "q5_1": "matlab.formats.ggml",
    "q5_k": "matlab.formats.ggml",
    "q5_0": "matlab.formats.ggml",
    "q4_1": "matlab.formats.ggml",
    "q4_k": "matlab.formats.ggml",
    "q4_0": "matlab.formats.ggml",
    "q3_k": "matlab.formats.ggml",
    "q2_k": "matlab.formats.ggml",
}
# Where ggml's library is missing, the types the `gguf` package also quantizes (the same bytes).
FALLBACK_IMPLEMENTATIONS = {"q8_0": "matlab.formats.reference", "q5_1": "matlab.formats.reference",
                            "q5_0": "matlab.formats.reference", "q4_1": "matlab.formats.reference",
                            "q4_0": "matlab.formats.reference"}
K_QUANTS = ("q6_k", "q5_k", "q4_k", "q3_k", "q2_k")
# llama.cpp's file types (`llama-quantize --ftype`): a type per tensor (`matlab.formats.presets`).
PRESET_NAMES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q8_0")
FORMATS = tuple(IMPLEMENTATIONS)
FLOAT_FORMATS = ("f32", "f16", "bf16")
# GGUF types (and llama.cpp file types such as q4_k_m) that are not offered, and why.
_NOT_OFFERED = (
    (re.compile(r"q[2-6]_k_[sml]"),
     "is a llama.cpp file type (a type per tensor), not one tensor's format: give it as the whole weight_formats "
     "(`weight_formats: q4_k_m`, or `{preset: q4_k_m}`)"),
    (re.compile(r"iq[1-4]_(xx?s|s|m|nl)|q8_k|q8_1|q1_0|nvfp4"),
     "needs an importance matrix or has no reference quantizer in llama.cpp, so quality at that format cannot be "
     "measured here"),
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


def check_preset(name: object) -> str:
    """The llama.cpp file type `name` names (any case), or FormatError listing them."""
    lowered = name.strip().lower() if isinstance(name, str) else None
    if lowered not in PRESET_NAMES:
        raise FormatError(f"{shown_value(name)} is not a llama.cpp file type; use one of {', '.join(PRESET_NAMES)}")
    return lowered


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
    format = check_format(format)
    module = IMPLEMENTATIONS[format]
    if module.endswith(".ggml") and not _ggml_available():
        if format not in FALLBACK_IMPLEMENTATIONS:
            from matlab.formats.ggml import library

            library()  # raises, saying how to install ggml's library
        module = FALLBACK_IMPLEMENTATIONS[format]
    return importlib.import_module(module)


def _ggml_available() -> bool:
    return importlib.util.find_spec("libggml") is not None


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


