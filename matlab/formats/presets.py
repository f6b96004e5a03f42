"""llama.cpp's file-type presets (`llama-quantize --ftype Q4_K_M`, the files people download) as
the type each tensor gets: `llama_tensor_get_type` of the llama.cpp that llama-cpp-python 0.3.36
vendors (src/llama-quant.cpp), with no importance matrix and default parameters, written from its
rules for the tensors a Gemma 3n GGUF holds.

- A tensor keeps its source type (the GGUF llama-quantize reads) when it is 1-D, a norm, or its
  GGUF name contains `altup`, `laurel` or `per_layer_model_proj` (`tensor_allows_quantization`).
- The token embedding and the per-layer table are the tied output (Gemma 3n writes no
  `output.weight`): q6_K, or q8_0 where the preset is Q8_0 or the rows are not whole blocks of
  its type.
- attn_v and ffn_down take more bits in some presets, by their position among the file's attn_v
  tensors (`i_attention_wv`) and among its layers (`i_ffn_down`, out of `block_count`):
  `use_more_bits(i, n)` is i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2 (C integer division).
- attn_output takes more bits in Q2_K, Q3_K_M, Q3_K_L.
- A row that is not whole blocks of the chosen type falls back: q2_K/q3_K -> q4_0, q4_K -> q5_0,
  q5_K -> q5_1, q6_K -> q8_0, and to f16 where even that does not fit (`tensor_type_fallback`).
Checked tensor by tensor against the file llama-quantize writes (tests/test_runtimes_real.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from matlab.formats.tensors import llama_fallback
from matlab.formats.types import fits

# preset -> the type of every tensor no rule below changes (`llama_ftype_get_default_type`).
PRESETS = {"q2_k": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k", "q4_k_m": "q4_k",
           "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k", "q8_0": "q8_0"}
# What llama.cpp calls a tensor, for its rules: the categories of `tensor_get_category`.
CATEGORIES = ("token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "other",
              "kept")


@dataclass(frozen=True)
class PresetTensor:
    """One tensor of the file, in the order llama.cpp's loader visits them (by layer, then name)."""

    category: str  # one of CATEGORIES; "kept": a tensor llama-quantize never quantizes
    row_length: int  # ne0: elements per row, the axis blocks run along
    ndim: int


def use_more_bits(position: int, count: int) -> bool:
    return position < count // 8 or position >= 7 * count // 8 or (position - count // 8) % 3 == 2


def _attn_v(preset: str, position: int, count: int, gqa: int, default: str) -> str:
    if preset == "q2_k":
        return "q4_k" if gqa >= 4 else "q3_k"
    if preset == "q3_k_m":
        return "q5_k" if position < 2 else "q4_k"
    if preset == "q3_k_l":
        return "q5_k"
    if preset in ("q4_k_m", "q5_k_m") and use_more_bits(position, count):
        return "q6_k"
    if preset == "q4_k_s" and position < 4:
        return "q5_k"
    return default


def _ffn_down(preset: str, layer: int, layers: int, default: str) -> str:
    if preset == "q2_k":
        return "q3_k"
    if preset == "q3_k_m":
        return "q5_k" if layer < layers // 16 else "q4_k"
    if preset == "q3_k_l":
        return "q5_k"
    if preset in ("q4_k_m", "q5_k_m") and use_more_bits(layer, layers):
        return "q6_k"
    if preset == "q4_k_s" and layer < layers // 8:
        return "q5_k"
    return default


def preset_types(preset: str, tensors: Sequence[PresetTensor], layers: int, gqa: int,
                 source: str) -> list[tuple[str, bool]]:
    """(type, fell back) of each tensor under `preset`, for a file of `layers` blocks whose
    attention has `gqa` query heads per key/value head, quantized from a file of type `source`."""
    default = PRESETS[preset]
    attn_v_count = sum(tensor.category == "attn_v" for tensor in tensors)
    attn_v = ffn_down = 0
    types = []
    for tensor in tensors:
        if tensor.category == "kept" or tensor.ndim < 2:
            types.append((source, False))
            continue
        chosen = default
        if tensor.category == "token_embd":
            chosen = "q8_0" if not fits(tensor.row_length, default) or default == "q8_0" else "q6_k"
        elif tensor.category == "attn_v":
            chosen = _attn_v(preset, attn_v, attn_v_count, gqa, default)
            attn_v += 1
        elif tensor.category == "ffn_down":
            chosen = _ffn_down(preset, ffn_down, layers, default)
            ffn_down += 1
        elif tensor.category == "attn_output":
            chosen = {"q2_k": "q3_k", "q3_k_m": "q4_k", "q3_k_l": "q5_k"}.get(preset, default)
        types.append((llama_fallback(tensor.row_length, chosen), not fits(tensor.row_length, chosen)))
    return types
