"""MatFormer training of the nano model: each step trains one sampled nested submodel.

Submodels are the inference core's elastic submodels; `torch.func.functional_call` runs
them with parameter views taken from the full model under autograd, so every step's
gradients land in the one set of full-model weights (no second model implementation).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import Gemma3nForCausalLM

from matlab.core.elastic import submodel_outputs
from matlab.nano.model import FFN, nano_config, nano_facts, nested_e2b, random_mix_n_match
from matlab.nano.tokenizer import build_tokenizer
from matlab.nano.world import World, document, make_world
from matlab.plan import SlicePlan
from matlab.progress import NO_PROGRESS, Progress

GRANULARITIES = ("full", "nano-E2B", "mix")


@dataclass
class TrainSettings:
    steps: int = 2000
    batch_size: int = 16
    sequence_length: int = 96
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    seed: int = 0
    people: int = 256
    matformer: bool = True  # False: the control, trained at full size only
    sample_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    device: str = "cpu"
    fact_share: float = 0.7  # share of training sentences that state a fact
    # Keep the people's rows of the token and per-layer embedding tables at their random
    # initial values, so their facts must be stored in the layers (an experiment of
    # matlab.bench.nano_capacity; the shipped models train every row).
    frozen_names: bool = False
    ffn: int = FFN  # the full model's FFN width (nano ships with FFN)


@dataclass
class TrainResult:
    model: Gemma3nForCausalLM
    tokenizer: object
    world: World
    curve: list[dict] = field(default_factory=list)  # step, granularity, loss, seconds
    seconds: float = 0.0


def token_stream(world: World, tokenizer, seed: int, fact_share: float = 0.7):
    """An endless stream of training tokens: documents separated by EOS."""
    generator = random.Random(seed)
    while True:
        yield from tokenizer(document(world, generator, fact_share=fact_share), add_special_tokens=False).input_ids
        yield tokenizer.eos_token_id


def batches(stream, batch_size: int, length: int, bos: int):
    while True:
        rows = [[bos, *(next(stream) for _ in range(length))] for _ in range(batch_size)]
        yield torch.tensor(rows)


def _learning_rate(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def submodel_loss(model: Gemma3nForCausalLM, plan: SlicePlan | None, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token loss of the full model (plan None) or of an elastic submodel, with
    gradients flowing into the full model's parameters."""
    if plan is None:
        return model(input_ids=input_ids, labels=input_ids).loss
    return submodel_outputs(model, plan, input_ids=input_ids, labels=input_ids).loss


def train_nano(settings: TrainSettings, progress: Progress = NO_PROGRESS,
               every: int = 0, on_every: Callable[[int, TrainResult], None] | None = None) -> TrainResult:
    """Train the nano model (MatFormer, or full-size only for the control). With `every`,
    `on_every(steps_done, result)` runs after every `every` steps (`result.model` in eval mode).
    `progress` counts steps and shows the sampled granularity and its loss."""
    torch.manual_seed(settings.seed)
    generator = random.Random(settings.seed)
    world = make_world(settings.people, seed=0)
    tokenizer = build_tokenizer(world.vocabulary())
    config = nano_config(len(tokenizer), settings.ffn)
    model = Gemma3nForCausalLM(config).to(settings.device)
    model.config._attn_implementation = "sdpa"
    model.train()
    facts = nano_facts(config)
    e2b_plan = SlicePlan.build(nested_e2b(settings.ffn), facts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.01)
    data = batches(token_stream(world, tokenizer, settings.seed, settings.fact_share), settings.batch_size,
                   settings.sequence_length, tokenizer.bos_token_id)
    name_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(world.people)), device=settings.device)
    # (table, initial rows) of the people's tokens in the token and per-layer embedding tables.
    frozen = [(table, table.detach()[name_ids].clone())
              for table in (model.model.embed_tokens.weight, model.model.embed_tokens_per_layer.weight)
              ] if settings.frozen_names else []
    result = TrainResult(model, tokenizer, world)
    progress.start(settings.steps, description="training")
    started = time.perf_counter()
    for step in range(settings.steps):
        granularity = generator.choices(GRANULARITIES, settings.sample_weights)[0] if settings.matformer else "full"
        plan = {"full": None, "nano-E2B": e2b_plan}.get(granularity)
        if granularity == "mix":
            plan = SlicePlan.build(random_mix_n_match(generator, settings.ffn), facts)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = submodel_loss(model, plan, next(data).to(settings.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for table, rows in frozen:  # restored rather than masked: AdamW's decay moves zero-gradient rows
                table[name_ids] = rows
        value = float(loss.detach())
        result.curve.append({"step": step, "granularity": granularity, "loss": round(value, 4),
                             "seconds": round(time.perf_counter() - started, 1)})
        progress.describe(f"training {granularity:>8} loss {value:.3f}")
        progress.advance()
        if on_every and every and (step + 1) % every == 0:
            model.eval()
            on_every(step + 1, result)
            model.train()
    result.seconds = time.perf_counter() - started
    model.eval()
    result.model = model.cpu()
    return result
