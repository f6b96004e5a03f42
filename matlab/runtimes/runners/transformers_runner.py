"""The reference runner: transformers in float32, one forward pass over the tokens.

A text-only `gemma3n_text` checkpoint loads as Gemma3nForCausalLM, a multimodal `gemma3n` one
as the class transformers maps it to (Gemma3nForConditionalGeneration), except a multimodal
config without towers (the mlx-lm layout): its text model, as Gemma3nForCausalLM with the
`text_config` (transformers drops the `language_model` prefix itself).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import installed_version, run  # noqa: E402


def load(model_path: str, n_tokens: int, top_k: int):
    import json

    import torch
    from transformers import AutoModelForCausalLM, Gemma3nForCausalLM, Gemma3nTextConfig

    with open(os.path.join(model_path, "config.json")) as handle:
        config = json.load(handle)
    if config.get("model_type") == "gemma3n" and "vision_config" not in config:
        text = {key: value for key, value in config["text_config"].items() if key != "model_type"}
        return Gemma3nForCausalLM.from_pretrained(model_path, config=Gemma3nTextConfig(**text),
                                                  dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


def compute(model, tokens: list[int], top_k: int):
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens]), use_cache=True).logits[0]
    return logits.double().numpy()  # the protocol takes the top-K (and any --score ids) from logits


if __name__ == "__main__":
    run("transformers", installed_version("transformers"), load, compute)
