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
a narrower MatFormer FFN is a view of the fully quantized tensor (`QuantizedWeight`): any
prefix of the rows (gate/up projections), or a prefix of every row's blocks (the down
projection, when its width is a multiple of the block).

`gguf` is imported inside the functions that need it: slice configs check format names with
`FORMATS` alone, so loading one costs no import of the package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

import numpy as np

from matlab.errors import FormatError, shown_value

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

# Widest first; each name is the GGMLQuantizationType member of that name, lower-cased.
FORMATS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
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


def quantize(weights: np.ndarray, format: str) -> np.ndarray:
    """`weights` in gguf's stored form of `format` (what GGUFWriter writes): uint8 blocks, bf16
    as uint8 pairs, f16 and f32 as elements. Computed by `gguf.quants.quantize`."""
    from gguf import quants

    qtype = ggml_type(format)
    if weights.ndim and not fits(weights.shape[-1], format):
        row_bytes(weights.shape[-1], format)  # raises, naming the row length and the block
    return quants.quantize(np.asarray(weights, dtype=np.float32), qtype)


def dequantize(stored: np.ndarray, format: str) -> np.ndarray:
    """The float32 values a stored tensor holds (`gguf.quants.dequantize`); a new array."""
    from gguf import quants

    values = quants.dequantize(stored, ggml_type(format))
    return values.copy() if np.shares_memory(values, stored) else values


def round_trip(weights: np.ndarray, format: str) -> np.ndarray:
    """`weights` as a file in `format` holds them: quantized by the reference quantizer and back."""
    return dequantize(quantize(weights, format), format)


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
