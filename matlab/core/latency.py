"""Prefill and decode throughput of a model on its device, warm-up excluded."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class Latency:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prompt_tokens: int
    decode_tokens: int
    runs: int
    device: str
    dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _one_run(model: PreTrainedModel, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    device = prompt.device
    cache = DynamicCache(config=model.config)
    _synchronize(device)
    started = time.perf_counter()
    output = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    _synchronize(device)
    prefill = time.perf_counter() - started
    token = output.logits[:, -1:].argmax(-1)
    started = time.perf_counter()
    for _ in range(decode_tokens):
        output = model(input_ids=token, past_key_values=output.past_key_values, use_cache=True)
        token = output.logits[:, -1:].argmax(-1)
    _synchronize(device)
    return prefill, time.perf_counter() - started


def measure_latency(model: PreTrainedModel, prompt_tokens: int = 128, decode_tokens: int = 32,
                    runs: int = 5, warmup: int = 1, seed: int = 0) -> Latency:
    """Median prefill and decode tokens/s over `runs` runs of a fixed random prompt."""
    weight = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, model.config.vocab_size, (1, prompt_tokens), generator=generator).to(weight.device)
    for _ in range(warmup):
        _one_run(model, prompt, decode_tokens)
    timings = [_one_run(model, prompt, decode_tokens) for _ in range(runs)]
    prefill = statistics.median(t for t, _ in timings)
    decode = statistics.median(t for _, t in timings)
    return Latency(prompt_tokens / prefill, decode_tokens / decode if decode_tokens else 0.0, prompt_tokens,
                   decode_tokens, runs, str(weight.device), str(weight.dtype).removeprefix("torch."))
