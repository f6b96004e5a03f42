"""Nested LoRA fine-tuning: one adapter on the full model that every deployed slice can use.

With `nested`, each step trains one slice drawn from those the user will deploy (the full
model, the family's trained granularity, the given configs) through the elastic core, as the
nano MatFormer was trained (`matlab.nano.train`): the slice runs on views of the full model and
of the adapter, so its loss trains the part of the adapter that slice keeps. Without it (the
control, `--full-only`) every step trains the full model. The run saves its state every
`save_every` steps (`matlab.training.state`) and resumes from it; the adapter appears in `out`
(PEFT's files) only when the run is complete.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from matlab.arch.facts import facts_from_checkpoint
from matlab.core.loading import load_model, load_tokenizer
from matlab.core.memory import check_batch_fits
from matlab.errors import DivergedError, InputError, OutputExistsError
from matlab.io.lock import run_directory_lock
from matlab.io.reader import CheckpointFiles
from matlab.io.resolve import resolve_checkpoint
from matlab.io.rundir import checkpoint_identity
from matlab.io.staging import check_apart, check_output, staged_output
from matlab.progress import NO_PROGRESS, Progress
from matlab.training.cards import write_finetune_card
from matlab.training.data import WindowOrder, read_text_file, read_windows
from matlab.training.nested import NestedLora, check_lora_rank
from matlab.training.slices import slice_for_step, trained_slices
from matlab.training.state import RunState, partial_directory


@dataclass(frozen=True)
class FinetuneSettings:
    checkpoint: str
    data: Path
    out: Path
    configs: tuple[Path, ...] = ()
    nested: bool = True
    rank: int = 8
    alpha: float | None = None  # None: twice the rank
    steps: int = 300
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    batch_size: int = 8
    sequence_length: int = 128
    full_share: float = 0.5  # with `nested`: the share of steps that train the full model
    seed: int = 0
    save_every: int = 50
    max_tokens: int = 4_000_000
    device: str = "cpu"
    dtype: str = "float32"
    force: bool = False


# Settings that do not change what the run computes: a run resumes under other values of them.
_NOT_IDENTITY = ("out", "force", "save_every", "device")


@dataclass
class FinetuneResult:
    out: Path
    slices: list[dict]
    curve: list[dict] = field(default_factory=list)  # step, slice, loss, seconds
    resumed_at: int = 0  # the step the run went on from (0: a fresh run)
    seconds: float = 0.0  # of training in this process
    windows: int = 0
    data_sha256: str = ""


def check_settings(settings: FinetuneSettings) -> None:
    for option, value, low in (("--steps", settings.steps, 1), ("--lora-rank", settings.rank, 1),
                               ("--batch-size", settings.batch_size, 1), ("--seq-len", settings.sequence_length, 2),
                               ("--save-every", settings.save_every, 1), ("--warmup-steps", settings.warmup_steps, 0),
                               ("--max-tokens", settings.max_tokens, 2)):
        if value < low:
            raise InputError(f"{option} {value}: must be at least {low}")
    if not (math.isfinite(settings.learning_rate) and settings.learning_rate > 0):
        raise InputError(f"--learning-rate {settings.learning_rate}: must be a positive finite number")
    if not 0 < settings.full_share <= 1:
        raise InputError(f"--full-share {settings.full_share}: must be above 0 and at most 1")
    if settings.configs and not settings.nested:
        raise InputError("--config names slices to train jointly, which --full-only does not; drop --config or "
                         "use --nested")


def learning_rate(step: int, settings: FinetuneSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    done = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def run_finetune(settings: FinetuneSettings, command: str | None = None,
                 progress: Progress = NO_PROGRESS) -> FinetuneResult:
    """Fine-tune (or resume fine-tuning) and publish the adapter in `settings.out`."""
    check_settings(settings)
    directory = resolve_checkpoint(settings.checkpoint)
    inputs = (directory, settings.data, *settings.configs)
    partial = partial_directory(settings.out)
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise OutputExistsError(f"{partial}: is a link or a file, where the run keeps its state in a folder of its own "
                                "(never written through a link); remove it, or choose another --out")
    check_apart(partial, inputs, option="--out")
    check_output(settings.out, settings.force, inputs)  # refused now, not after the training
    facts = facts_from_checkpoint(directory)
    # Numbers that size what is allocated, checked against this model and machine first.
    check_lora_rank(settings.rank, facts.family, CheckpointFiles(directory))
    check_batch_fits("--batch-size", settings.batch_size, settings.sequence_length, facts, settings.device)
    slices = trained_slices(facts.text_only(), list(settings.configs), settings.nested)
    windows = read_windows(load_tokenizer(directory), read_text_file(settings.data), str(settings.data),
                           settings.sequence_length, settings.max_tokens)
    arguments = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()}
    arguments["configs"] = [str(path) for path in settings.configs]
    identity = {**{key: value for key, value in arguments.items() if key not in _NOT_IDENTITY},
                "checkpoint": checkpoint_identity(directory), "data_sha256": windows.texts_sha256,
                "slices": [entry.record() for entry in slices]}
    result = FinetuneResult(settings.out, identity["slices"], windows=windows.count, data_sha256=windows.texts_sha256)
    loaded = load_model(directory, device=settings.device, dtype=settings.dtype)  # before anything is written
    with run_directory_lock(partial):
        state = RunState(partial, identity, arguments, settings.force)
        torch.manual_seed(settings.seed)  # PEFT's initialization of A
        lora = NestedLora(loaded.model, loaded.facts, settings.rank, settings.alpha or 2 * settings.rank)
        _train(settings, lora, slices, windows, state, result, progress)
        with staged_output(settings.out, settings.force, inputs) as temporary:
            lora.adapter_for(facts, str(directory)).write(temporary, str(directory))
            write_finetune_card(temporary, settings, result, identity, command)
        state.remove()
    return result


def _train(settings: FinetuneSettings, lora: NestedLora, slices, windows, state: RunState, result: FinetuneResult,
           progress: Progress) -> None:
    parameters = list(lora.adapter.values())
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    saved = state.load(settings.steps, lora.adapter)
    if saved is not None:
        lora.load_adapter(saved["adapter"])
        try:
            optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as error:
            raise InputError(f"{state.path}: 'optimizer' cannot be restored ({type(error).__name__}); remove "
                             f"{state.directory} to start over, or pass --force") from None
        torch.set_rng_state(saved["rng"])
        result.resumed_at, result.curve = saved["step"], saved["curve"]
    order = WindowOrder(windows.count, settings.batch_size, settings.seed)
    saved_step = result.resumed_at
    progress.start(settings.steps, completed=result.resumed_at, description="fine-tuning")
    started = time.perf_counter()
    for step in range(result.resumed_at, settings.steps):
        entry = slice_for_step(slices, settings.full_share, settings.seed, step)
        batch = order.batch(windows, step).to(settings.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss = lora(entry.plan, input_ids=batch, labels=batch).loss
        value = float(loss.detach())
        _check_finite(value, parameters, step, state, saved_step, "loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        _check_finite(value, parameters, step, state, saved_step, "adapter")
        result.curve.append({"step": step, "slice": entry.name, "loss": round(value, 4),
                             "seconds": round(time.perf_counter() - started, 2)})
        progress.describe(f"fine-tuning {entry.name} loss {value:.3f}")
        progress.advance()
        if (step + 1) % settings.save_every == 0 and step + 1 < settings.steps:
            state.save({"step": step + 1, "adapter": {name: p.detach().cpu() for name, p in lora.adapter.items()},
                        "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "curve": result.curve})
            saved_step = step + 1
    result.seconds = time.perf_counter() - started


def _check_finite(loss: float, parameters: list[torch.Tensor], step: int, state: RunState, saved_step: int,
                  what: str) -> None:
    """Stop a run whose loss (`what` "loss") or adapter ("adapter") stopped being finite (a
    learning rate too high, bad data): the state saved last, of finite weights, stays in place
    and nothing is published."""
    if what == "loss" and math.isfinite(loss):
        return
    if what == "adapter" and all(bool(torch.isfinite(parameter).all()) for parameter in parameters):
        return
    kept = f"its state from step {saved_step} is kept in {state.directory}" if saved_step else "no state was saved yet"
    found = f"the loss is not finite ({loss})" if what == "loss" else "the adapter holds values that are not finite"
    raise DivergedError(f"step {step}: {found}, so the run stopped and published nothing; {kept}; start over with "
                        "--force and a lower --learning-rate")
