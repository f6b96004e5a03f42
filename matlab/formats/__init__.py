"""GGUF weight formats: their names and exact bytes (`types`), the per-tensor rules of
llama.cpp's converter (`tensors`), and the round trips a search measures quality with
(`cache`). `matlab.formats.types.round_trip(values, format)` puts a float32 array through a format."""

from matlab.formats.types import (
    FLOAT_FORMATS,
    FORMATS,
    block_shape,
    block_size,
    check_format,
    dequantize,
    fits,
    quantize,
    round_trip,
    row_bytes,
    tensor_bytes,
)

__all__ = ["FLOAT_FORMATS", "FORMATS", "block_shape", "block_size", "check_format", "dequantize", "fits", "quantize",
           "round_trip", "row_bytes", "tensor_bytes"]
