"""Healing a slice: distil the full model into it, and write the healed slice as a checkpoint.

The full model's next-token distributions on calibration text are computed once (as the
search's objective computes them); the slice, run through the elastic core on the full model's
weights, is trained to match them. Two methods: `lora`, a LoRA adapter trained on the slice and
merged into its weights, and `weights`, the slice's own kept weights trained (every kept tensor
but the embedding tables, which every slice shares). KL and perplexity on held-out text, before
and after, are measured by the search's functions, the "after" on the checkpoint as written.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from matlab.arch.facts import facts_from_checkpoint
from matlab.core.elastic import build_submodel, submodel_outputs
from matlab.core.loading import load_model, load_tokenizer
from matlab.core.memory import check_batch_fits
from matlab.errors import DivergedError, InputError
from matlab.io.reader import CheckpointFiles
from matlab.io.resolve import EMBEDDED, resolve_checkpoint
from matlab.io.rundir import checkpoint_identity
from matlab.io.staging import check_output
from matlab.plan import SlicePlan
from matlab.progress import NO_PROGRESS, Progress
from matlab.slice_config import load_slice_config
from matlab.training.data import WindowOrder
from matlab.training.distill import Distillation, distillation_loss, prepare, split_calibration
from matlab.training.healed import write_healed
from matlab.training.nested import NestedLora, check_lora_rank

METHODS = ("lora", "weights")
DEFAULT_RATES = {"lora": 2e-3, "weights": 3e-4}


@dataclass(frozen=True)
class HealSettings:
    checkpoint: str
    config: Path
    out: Path
    method: str = "lora"
    steps: int = 300
    learning_rate: float | None = None  # None: the method's default (DEFAULT_RATES)
    rank: int = 16
    calibration: Path | None = None
    heldout: Path | None = None
    calibration_tokens: int = 65_536
    window: int = 128
    batch_size: int = 8
    top_k: int = 128
    seed: int = 0
    text_only: bool = False
    device: str = "cpu"
    force: bool = False


@dataclass
class HealResult:
    out: Path
    before: dict[str, float]
    after: dict[str, float]
    curve: list[dict] = field(default_factory=list)  # step, loss (KL on the training batch)
    seconds: float = 0.0


def check_settings(settings: HealSettings) -> None:
    if settings.method not in METHODS:
        raise InputError(f"--method {settings.method}: choose one of {', '.join(METHODS)}")
    for option, value, low in (("--steps", settings.steps, 1), ("--lora-rank", settings.rank, 1),
                               ("--batch-size", settings.batch_size, 1), ("--window", settings.window, 2),
                               ("--calibration-tokens", settings.calibration_tokens, 2),
                               ("--top-k", settings.top_k, 1)):
        if value < low:
            raise InputError(f"{option} {value}: must be at least {low}")
    rate = settings.learning_rate
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise InputError(f"--learning-rate {settings.learning_rate}: must be a positive finite number")


def _trainer(method: str, model: torch.nn.Module, facts, plan: SlicePlan, rank: int):
    """(forward(input_ids) -> logits of the slice, trained parameters, finish() -> the full
    model's weights that now hold the healed slice)."""
    if method == "lora":
        lora = NestedLora(model, facts, rank, 2 * rank)
        return (lambda ids: lora(plan, input_ids=ids).logits), list(lora.adapter.values()), lora.merge
    embedding_tables = tuple(facts.text_prefix + prefix for prefix in facts.family.embedding_groups)
    trained = [name for name, parameter in model.named_parameters() if not name.startswith(embedding_tables)
               and plan.tensor_spec(name, tuple(parameter.shape)) is not None]
    weights = dict(model.named_parameters())
    for name, parameter in weights.items():
        parameter.requires_grad_(name in trained)
    skeleton = build_submodel(model, plan)
    return ((lambda ids: submodel_outputs(model, plan, skeleton, input_ids=ids).logits),
            [weights[name] for name in trained], lambda: trained)


def _train(settings: HealSettings, distillation: Distillation, forward, parameters, device: str,
           progress: Progress) -> list[dict]:
    rate = settings.learning_rate or DEFAULT_RATES[settings.method]
    optimizer = torch.optim.AdamW(parameters, lr=rate, weight_decay=0.0)
    order = WindowOrder(len(distillation.train.batches), 1, settings.seed)
    curve = []
    progress.start(settings.steps, description="healing")
    for step in range(settings.steps):
        ids, top_logprobs, top_ids, rest_logprobs = distillation.batch(order.indices(step)[0])
        for group in optimizer.param_groups:  # linear decay to a tenth: a short run on one slice
            group["lr"] = rate * (1 - 0.9 * step / settings.steps)
        loss = distillation_loss(forward(ids.to(device)), top_logprobs, top_ids, rest_logprobs)
        if not torch.isfinite(loss):
            raise DivergedError(f"step {step}: the KL to the full model is not finite ({float(loss)}), so healing "
                                "stopped and wrote nothing; run it again with a lower --learning-rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        curve.append({"step": step, "loss": round(float(loss.detach()), 5)})
        progress.describe(f"healing: KL {curve[-1]['loss']:.4f}")
        progress.advance()
    if not all(bool(torch.isfinite(parameter).all()) for parameter in parameters):
        raise DivergedError(f"after step {settings.steps - 1}: the trained weights hold values that are not finite, so "
                            "healing wrote nothing; run it again with a lower --learning-rate")
    return curve


def run_heal(settings: HealSettings, command: str | None = None, progress: Progress = NO_PROGRESS) -> HealResult:
    """Heal the slice `settings.config` of the checkpoint and write it to `settings.out`."""
    check_settings(settings)
    directory = resolve_checkpoint(settings.checkpoint)
    inputs = (directory, settings.config, settings.calibration, settings.heldout)
    check_output(settings.out, settings.force, inputs)  # refused now, not after the training
    facts = facts_from_checkpoint(directory)
    if settings.method == "lora":
        check_lora_rank(settings.rank, facts.family, CheckpointFiles(directory))
    config = load_slice_config(settings.config)
    plan = SlicePlan.build(config, facts.text_only(), str(settings.config))
    train, heldout = split_calibration(load_tokenizer(directory), settings.calibration, settings.heldout,
                                       settings.checkpoint in EMBEDDED, settings.window, settings.calibration_tokens,
                                       settings.batch_size)
    # A step trains one batch of windows: as many as --batch-size, or all the calibration has.
    check_batch_fits("--batch-size", settings.batch_size, settings.window, facts, settings.device,
                     windows=max(len(batch) for batch in train.batches))
    loaded = load_model(directory, device=settings.device, dtype="float32")
    progress.start(None, description="the full model's distributions")
    distillation = prepare(loaded.model, train, heldout, settings.top_k)
    before = distillation.measure(build_submodel(loaded.model, plan))
    torch.manual_seed(settings.seed)
    forward, parameters, finish = _trainer(settings.method, loaded.model, loaded.facts, plan, settings.rank)
    started = time.perf_counter()
    curve = _train(settings, distillation, forward, parameters, settings.device, progress)
    seconds = time.perf_counter() - started
    result = HealResult(settings.out, before, {}, curve, seconds)

    def record(written: Path) -> dict:
        result.after = distillation.measure(load_model(written, device=settings.device, dtype="float32").model)
        return {"method": settings.method, "steps": settings.steps, "seconds": round(seconds, 1),
                "learning_rate": settings.learning_rate or DEFAULT_RATES[settings.method],
                **({"lora_rank": settings.rank} if settings.method == "lora" else {}),
                "batch_size": settings.batch_size, "window": settings.window, "top_k": settings.top_k,
                "seed": settings.seed, "calibration": train.source, "calibration_sha256": train.texts_sha256,
                "calibration_tokens": train.tokens,
                "heldout": {"source": heldout.source, "tokens": heldout.tokens, "before": before,
                            "after": result.after},
                "teacher": checkpoint_identity(directory), "loss_first_last": [curve[0]["loss"], curve[-1]["loss"]]}

    write_healed(settings.out, force=settings.force, source=directory, facts=facts, config=config,
                 config_source=str(settings.config), model=loaded.model, changed=finish(),
                 text_only=settings.text_only, command=command, inputs=inputs, record=record)
    return result
