"""Training commands: nested LoRA fine-tuning (finetune) and healing a slice by distillation (heal)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from matlab.cli.common import (
    ComputeThreadsOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    RichProgress,
    finite,
    reported_errors,
    run_dtype,
    say,
)
from matlab.util.threads import apply_thread_policy

StepsOpt = Annotated[int, typer.Option("--steps", help="Optimizer steps.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seeds the initialization and the data order.")]
LearningRateOpt = Annotated[float, typer.Option("--learning-rate", callback=finite, help="Peak learning rate (AdamW).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Token windows per step.")]
RankOpt = Annotated[int, typer.Option("--lora-rank", help="LoRA rank.")]


def _command(name: str, checkpoint: str, options: dict[str, object], flags: list[str]) -> str:
    """The command line that reproduces a run, for its card."""
    words = ["matformer", name, checkpoint]
    for option, value in options.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                words += [option, str(item)]
    return shlex.join(words + flags)


def finetune(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory, hub id or 'nano'.")],
             data: Annotated[Path, typer.Option("--data", help="Training text: a text file, or JSONL with a 'text' "
                                                                "field per line.")],
             out: Annotated[Path, typer.Option("--out", help="Adapter directory (PEFT's files), written when the run "
                                                             "is complete; OUT.partial holds the run until then.")],
             nested: Annotated[bool, typer.Option(
                 "--nested/--full-only", help="Train each step on one slice drawn from the full model, the family's "
                                              "trained granularity (E2B) and the --config slices; or the full model "
                                              "only.")] = True,
             config: Annotated[Optional[list[Path]], typer.Option(
                 "--config", help="A slice you will deploy (repeat for more): trained jointly with --nested.")] = None,
             lora_rank: RankOpt = 8,
             lora_alpha: Annotated[Optional[int], typer.Option("--lora-alpha", help="LoRA alpha (default: twice the "
                                                                                     "rank).")] = None,
             steps: StepsOpt = 300, learning_rate: LearningRateOpt = 1e-3,
             warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warm-up steps.")] = 10,
             batch_size: BatchOpt = 8,
             seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window (BOS included).")] = 128,
             full_share: Annotated[float, typer.Option(
                 "--full-share", callback=finite, help="With --nested: the share of steps that train the full "
                                                       "model.")] = 0.5,
             seed: SeedOpt = 0,
             save_every: Annotated[int, typer.Option("--save-every", help="Save the run's state every N steps (a "
                                                                           "killed run resumes from it).")] = 50,
             max_tokens: Annotated[int, typer.Option("--max-tokens", help="Read at most this many tokens of "
                                                                           "--data.")] = 4_000_000,
             device: DeviceOpt = "cpu", dtype: DtypeOpt = "auto", force: ForceOpt = False,
             threads: ComputeThreadsOpt = None) -> None:
    """LoRA fine-tuning whose one adapter serves every slice: with --nested each step trains one
    deployed slice through the elastic core. Killed, the same command resumes it."""
    apply_thread_policy(threads)
    from matlab.training.finetune import FinetuneSettings, run_finetune
    from matlab.training.state import partial_directory

    settings = FinetuneSettings(checkpoint, data, out, configs=tuple(config or ()), nested=nested, rank=lora_rank,
                                alpha=lora_alpha, steps=steps, learning_rate=learning_rate, warmup_steps=warmup_steps,
                                batch_size=batch_size, sequence_length=seq_len, full_share=full_share, seed=seed,
                                save_every=save_every, max_tokens=max_tokens, device=device,
                                dtype=run_dtype(checkpoint, dtype, device), force=force)
    command = _command("finetune", checkpoint, {
        "--data": data, "--out": out, "--config": config, "--lora-rank": lora_rank, "--lora-alpha": lora_alpha,
        "--steps": steps, "--learning-rate": learning_rate, "--warmup-steps": warmup_steps,
        "--batch-size": batch_size, "--seq-len": seq_len, "--full-share": full_share if nested else None,
        "--seed": seed, "--max-tokens": max_tokens}, ["--nested" if nested else "--full-only"])
    with reported_errors(resumes=partial_directory(out)), RichProgress() as progress:
        result = run_finetune(settings, command, progress)
    if result.resumed_at:
        say(f"resumed at step {result.resumed_at} of {steps}")
    losses = ", ".join(f"{name} {loss:.3f}" for name, loss in _final(result).items())
    say(f"wrote {out}: LoRA rank {lora_rank}, {steps} steps over {len(result.slices)} slice(s) ({losses}); "
        f"cut it with `matformer slice {checkpoint} --config SLICE.yaml --out DIR --adapter {out}`")


def _final(result) -> dict[str, float]:
    from matlab.training.cards import mean_losses

    return mean_losses(result.curve)


def heal(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory, hub id or 'nano'.")],
         config: Annotated[Path, typer.Option("--config", help="The slice to heal (slice config YAML).")],
         out: Annotated[Path, typer.Option("--out", help="Output directory: the healed slice as a checkpoint.")],
         method: Annotated[str, typer.Option("--method", help="lora (a LoRA adapter on the slice, merged in) or "
                                                              "weights (the slice's own weights trained).")] = "lora",
         steps: StepsOpt = 300,
         learning_rate: Annotated[Optional[float], typer.Option(
             "--learning-rate", callback=finite,
             help="Peak learning rate (default: 2e-3 for lora, 3e-4 for weights).")] = None,
         lora_rank: RankOpt = 16,
         calibration: Annotated[Optional[Path], typer.Option(
             "--calibration", help="Text to distil on: a text file, or JSONL with a 'text' field per line (nano: "
                                   "the search's nano-world text by default). A tenth is held out to measure.")] = None,
         heldout: Annotated[Optional[Path], typer.Option(
             "--heldout", help="Held-out text for the before/after measurement (default: the last tenth of "
                               "--calibration).")] = None,
         calibration_tokens: Annotated[int, typer.Option("--calibration-tokens",
                                                         help="Tokens of calibration text read.")] = 65_536,
         window: Annotated[int, typer.Option("--window", help="Tokens per window (BOS included).")] = 128,
         batch_size: BatchOpt = 8,
         top_k: Annotated[int, typer.Option("--top-k", help="The full model's top tokens kept per position.")] = 128,
         seed: SeedOpt = 0,
         text_only: Annotated[bool, typer.Option(help="Drop audio/vision; write a text-only checkpoint.")] = False,
         device: DeviceOpt = "cpu", force: ForceOpt = False, threads: ComputeThreadsOpt = None) -> None:
    """Heal a slice by distillation from the full model (KL on its next-token distributions) and
    write it as a checkpoint, with the KL before and after on held-out text in its card."""
    apply_thread_policy(threads)
    from matlab.training.heal import HealSettings, run_heal

    settings = HealSettings(checkpoint, config, out, method=method, steps=steps, learning_rate=learning_rate,
                            rank=lora_rank, calibration=calibration, heldout=heldout,
                            calibration_tokens=calibration_tokens, window=window, batch_size=batch_size, top_k=top_k,
                            seed=seed, text_only=text_only, device=device, force=force)
    command = _command("heal", checkpoint, {
        "--config": config, "--out": out, "--method": method, "--steps": steps, "--learning-rate": learning_rate,
        "--lora-rank": lora_rank if method == "lora" else None, "--calibration": calibration, "--heldout": heldout,
        "--calibration-tokens": calibration_tokens, "--window": window, "--batch-size": batch_size,
        "--top-k": top_k, "--seed": seed}, ["--text-only"] if text_only else [])
    with reported_errors(), RichProgress() as progress:
        result = run_heal(settings, command, progress)
    say(f"wrote {out}: healed ({method}, {steps} steps, {result.seconds / 60:.1f} minutes); held-out KL to the full "
        f"model {result.before['kl']:.4f} -> {result.after['kl']:.4f}, perplexity {result.before['perplexity']:.3f} "
        f"-> {result.after['perplexity']:.3f}")


def register(app: typer.Typer) -> None:
    app.command()(finetune)
    app.command()(heal)

