"""mlx-lm: `mlx_lm.load`, the weights cast to float32, one forward pass with a prompt cache.

The cache is what mlx-lm's own generation passes; it is needed here: without one, the KV-shared
layers of Gemma 3n compute keys and values with their own projections instead of reading their
producer's cache (`mlx_lm/models/gemma3n.py`, Gemma3nAttention).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import installed_version, run, top_from_logits  # noqa: E402


def load(model_path: str, n_tokens: int, top_k: int):
    import mlx.core as mx
    import mlx_lm

    model, _tokenizer = mlx_lm.load(model_path)
    model.set_dtype(mx.float32)  # bf16 weights would stay bf16; compare in float32
    return model


def compute(model, tokens: list[int], top_k: int):
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    logits = model(mx.array([tokens]), cache=make_prompt_cache(model))[0]
    return top_from_logits(np.array(logits.astype(mx.float32)), top_k)


if __name__ == "__main__":
    run("mlx-lm", installed_version("mlx-lm"), load, compute)
