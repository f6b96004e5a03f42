"""Prefill and decode throughput of models on their device, measured round-robin.

A busy machine slows whatever runs while it is busy. Measuring each config's runs back to back
lets a burst of load land on one config and reorder them; measuring round-robin (every config
once per round, several rounds) spreads the load over all of them, and the median per config
is what is compared. The spread (min and max over rounds) is kept beside it.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from matlab.util.dtypes import torch_name


@dataclass(frozen=True)
class Latency:
    """Median and range of a model's throughput over the rounds, and where it was measured."""

    prefill_tokens_per_s: float
    prefill_tokens_per_s_min: float
    prefill_tokens_per_s_max: float
    decode_tokens_per_s: float
    decode_tokens_per_s_min: float
    decode_tokens_per_s_max: float
    prompt_tokens: int
    decode_tokens: int
    rounds: int
    threads: int
    device: str
    dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _one_run(model: PreTrainedModel, prompt: torch.Tensor, decode_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one prompt and `decode_tokens` greedy steps."""
    device = prompt.device
    cache = DynamicCache(config=model.config)  # filled in place by every call
    # transformers renamed past_key_values to cache (5.2x; the old name warns): pass what this one takes
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    _synchronize(device)
    started = time.perf_counter()
    output = model(input_ids=prompt, use_cache=True, **{name: cache})
    _synchronize(device)
    prefill = time.perf_counter() - started
    token = output.logits[:, -1:].argmax(-1)
    started = time.perf_counter()
    for _ in range(decode_tokens):
        output = model(input_ids=token, use_cache=True, **{name: cache})
        token = output.logits[:, -1:].argmax(-1)
    _synchronize(device)
    return prefill, time.perf_counter() - started


def round_robin_latency(models: dict[str, PreTrainedModel], prompt_tokens: int = 64, decode_tokens: int = 16,
                        rounds: int = 5, seed: int = 0,
                        on_round: Callable[[int], None] | None = None) -> dict[str, Latency]:
    """Throughput of every model: one warm-up run each, then `rounds` rounds in which every
    model runs once, in order. Returns the median and range per model."""
    timings: dict[str, list[tuple[float, float]]] = {key: [] for key in models}
    prompts = {}
    for key, model in models.items():
        weight = model.get_input_embeddings().weight
        generator = torch.Generator().manual_seed(seed)
        prompts[key] = torch.randint(3, model.config.vocab_size, (1, prompt_tokens), generator=generator).to(
            weight.device)
        _one_run(model, prompts[key], decode_tokens)
    for round_number in range(rounds):
        for key, model in models.items():
            timings[key].append(_one_run(model, prompts[key], decode_tokens))
        if on_round:
            on_round(round_number + 1)
    results = {}
    for key, model in models.items():
        weight = model.get_input_embeddings().weight
        prefill = [prompt_tokens / seconds for seconds, _ in timings[key]]
        decode = [decode_tokens / seconds if decode_tokens else 0.0 for _, seconds in timings[key]]
        results[key] = Latency(statistics.median(prefill), min(prefill), max(prefill), statistics.median(decode),
                               min(decode), max(decode), prompt_tokens, decode_tokens, rounds,
                               torch.get_num_threads(), str(weight.device), torch_name(weight.dtype))
    return results


def measure_latency(model: PreTrainedModel, prompt_tokens: int = 128, decode_tokens: int = 32, runs: int = 5,
                    seed: int = 0) -> Latency:
    """Median prefill and decode tokens/s of one model over `runs` runs."""
    return round_robin_latency({"model": model}, prompt_tokens, decode_tokens, runs, seed)["model"]
