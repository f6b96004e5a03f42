"""mlx-vlm: the model half of `mlx_vlm.load` (`mlx_vlm.utils.load_model`, strict), the weights
cast to float32, then its language model alone on the token ids, with a prompt cache as
mlx-vlm's own generation passes.

`mlx_vlm.load` also loads a processor (preprocessor_config.json and a tokenizer with Gemma 3n's
image and audio tokens); token ids need none, so a model without one is still measured.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import installed_version, run, top_from_logits  # noqa: E402


def load(model_path: str, n_tokens: int, top_k: int):
    from pathlib import Path

    import mlx.core as mx
    from mlx_vlm.utils import load_model

    model = load_model(Path(model_path), strict=True)
    model.set_dtype(mx.float32)  # bf16 weights would stay bf16; compare in float32
    return model.language_model


def compute(language_model, tokens: list[int], top_k: int):
    import mlx.core as mx
    import numpy as np

    output = language_model(mx.array([tokens]), cache=language_model.make_cache())
    return top_from_logits(np.array(output.logits[0].astype(mx.float32)), top_k)


if __name__ == "__main__":
    run("mlx-vlm", installed_version("mlx-vlm"), load, compute)
