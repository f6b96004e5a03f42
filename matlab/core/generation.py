"""Text generation with a KV cache (greedy or sampled), through transformers' `generate`."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def generate_ids(model: PreTrainedModel, prompt_ids: list[int], max_new_tokens: int = 32,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, use_cache: bool = True,
                 eos_token_id: int | list[int] | None = None) -> list[int]:
    """New token ids after `prompt_ids`; temperature 0 is greedy decoding."""
    device = model.get_input_embeddings().weight.device
    input_ids = torch.tensor([prompt_ids], device=device)
    sampling = temperature > 0
    options = dict(max_new_tokens=max_new_tokens, do_sample=sampling, use_cache=use_cache,
                   attention_mask=torch.ones_like(input_ids), pad_token_id=model.config.pad_token_id,
                   eos_token_id=eos_token_id if eos_token_id is not None else model.config.eos_token_id)
    if sampling:
        torch.manual_seed(seed)
        options.update(temperature=temperature, top_p=top_p, top_k=None)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    output = model.generate(input_ids, **options)
    return output[0, len(prompt_ids):].tolist()
