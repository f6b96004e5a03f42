"""The per-tensor rules of llama.cpp's converter (`convert_hf_to_gguf.py`, `prepare_tensors`):
the format a tensor is stored in, given the format its group asks for, so that counted bytes
are those of the file it writes:

- 1-D tensors (norms, scales) are F32 whatever the file's type: the converter stores them so
  ("most of the codebase that takes in 1D tensors or norms only handles F32").
- A family's `gguf_float32_tensors` are F32 too (Gemma 3n's AltUp coefficients, 4x4 and
  16x4: the converter's ALTUP_CORRECT_COEF and ALTUP_PREDICT_COEF).
- A tensor whose rows are not whole blocks of its format is stored as F16: the converter's
  fallback when gguf refuses the shape, and llama-quantize's for a 32-element block type. Each
  is reported (`FormatCost.fallbacks`).

Which tensors a slice's file holds, at which shape and asking for which format, is the plan's
(`matlab.plan.tensor_formats`).
"""

from __future__ import annotations

from dataclasses import dataclass

from matlab.formats.types import fits, tensor_bytes

FALLBACK_FORMAT = "f16"


@dataclass(frozen=True)
class TensorFormat:
    """The format one tensor is stored in, and the one its group asked for (they differ on a fallback)."""

    name: str                # the source checkpoint's name
    shape: tuple[int, ...]   # as the GGUF stores it: sliced, padded to the vocabulary
    format: str
    asked: str

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.format)

    @property
    def fell_back(self) -> bool:
        return self.format != self.asked


@dataclass(frozen=True)
class FormatCost:
    """Bytes of a slice's text tensors at their formats."""

    total_bytes: int
    bytes_by_format: dict[str, int]
    fallbacks: tuple[str, ...]  # one line per kind of fallback, naming the first few tensors

    @property
    def formats(self) -> str:
        return "/".join(sorted(self.bytes_by_format))


def stored_format(shape: tuple[int, ...], asked: str, always_float32: bool = False) -> str:
    """The format the converter stores a tensor of `shape` in when its group asks for `asked`
    (`always_float32`: the family keeps it in F32)."""
    if len(shape) < 2 or always_float32:
        return "f32"
    return asked if fits(shape[-1], asked) else FALLBACK_FORMAT


# llama-quantize's types for a row that is not whole blocks of the asked K-quant (`tensor_type_fallback`).
LLAMA_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def llama_fallback(row_length: int, asked: str) -> str:
    """The type llama-quantize stores a tensor in when asked for `asked`: itself where its rows
    are whole blocks, else its fallback, else F16 ("unusual shape")."""
    if fits(row_length, asked):
        return asked
    fallback = LLAMA_FALLBACK.get(asked, asked)
    return fallback if fits(row_length, fallback) else FALLBACK_FORMAT
