"""The formats the `gguf` package (llama.cpp's own gguf-py) quantizes: its numpy ports of
llama.cpp's `quantize_row_*_ref` for the 32-element block types, and the float casts. With no
importance matrix, `llama-quantize` runs the same reference code, so these bytes are its."""

from __future__ import annotations

import numpy as np


def quantize(values: np.ndarray, format: str) -> np.ndarray:
    """float32 `values` in gguf's stored form of `format`."""
    from gguf import GGMLQuantizationType, quants

    return quants.quantize(values, GGMLQuantizationType[format.upper()])


def dequantize(stored: np.ndarray, format: str) -> np.ndarray:
    """The float32 values `stored` holds."""
    from gguf import GGMLQuantizationType, quants

    return quants.dequantize(stored, GGMLQuantizationType[format.upper()])
