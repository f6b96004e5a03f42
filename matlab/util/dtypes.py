"""Dtype names: safetensors' (`BF16`), torch's (`bfloat16`), and the bytes per element.

One table for the whole package; torch is imported only by `torch_dtype`, so the slicer and
the accounting never load it.
"""

from __future__ import annotations

SAFETENSORS_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                     "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
TORCH_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
                        "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
SAFETENSORS_TO_TORCH = {short: name for name, short in TORCH_TO_SAFETENSORS.items()}
# The dtypes the inference core runs a model in.
RUN_DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    """The torch dtype named `name` (a torch name such as `bfloat16` or a safetensors one such as `BF16`)."""
    import torch

    name = SAFETENSORS_TO_TORCH.get(name, name)
    if name not in TORCH_TO_SAFETENSORS:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(RUN_DTYPES)}")
    return getattr(torch, name)


def torch_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")
