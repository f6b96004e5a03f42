"""Running commands: generate, score and perplexity on any (elastic) submodel; train nano."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from matlab.cli.common import (
    ComputeThreadsOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    RichProgress,
    console,
    finite,
    reported_errors,
    say,
    warn_line,
)
from matlab.util.threads import apply_thread_policy


def load_submodel(checkpoint: str, config: Path | None, device: str, dtype: str, ple_on_cpu: bool = False,
                  adapter: Path | None = None):
    """The full model, or the elastic submodel of `config`, with its warnings printed."""
    from matlab.core.loading import load_model
    from matlab.core.submodel import select_submodel
    from matlab.slice_config import load_slice_config

    slice_config = load_slice_config(config) if config else None
    loaded = load_model(checkpoint, device=device, dtype=dtype, ple_on_cpu=ple_on_cpu, adapter=adapter)
    submodel = select_submodel(loaded, slice_config, str(config))
    for warning in submodel.warnings:
        warn_line(str(warning))
    return submodel


def generate(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
             prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
             config: ConfigOpt = None,
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
             temperature: Annotated[float, typer.Option(min=0.0, callback=finite, help="0 is greedy.")] = 0.0,
             top_p: Annotated[float, typer.Option(min=0.0, max=1.0, callback=finite)] = 1.0,
             seed: int = 0, device: DeviceOpt = "cpu", dtype: DtypeOpt = "auto",
             threads: ComputeThreadsOpt = None) -> None:
    """Continue a prompt (greedy by default, with a KV cache)."""
    apply_thread_policy(threads)
    from matlab.core.text import generate_text

    with reported_errors():
        submodel = load_submodel(checkpoint, config, device, dtype)
        text = generate_text(submodel, prompt, max_new_tokens, temperature, top_p, seed)
    say(text)


def score(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
          text: Annotated[str, typer.Option("--text", help="Text to score.")],
          config: ConfigOpt = None, device: DeviceOpt = "cpu", dtype: DtypeOpt = "auto",
          as_json: JsonOpt = False, threads: ComputeThreadsOpt = None) -> None:
    """Per-token log-probabilities of a text."""
    apply_thread_policy(threads)
    from rich.text import Text

    from matlab.core.text import score_text

    with reported_errors():
        result = score_text(load_submodel(checkpoint, config, device, dtype), text)
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    table = Table("token", "logprob")
    for token, logprob in zip(result.tokens, result.logprobs):
        table.add_row(Text(repr(token)), f"{logprob:.4f}")
    console.print(table)
    say(f"total log-probability {result.total_logprob:.4f} over {len(result.tokens)} tokens")


def perplexity(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
               file: Annotated[Path, typer.Option("--file", help="UTF-8 text file.", exists=True, dir_okay=False)],
               config: ConfigOpt = None, window: Annotated[int, typer.Option(min=2)] = 512,
               device: DeviceOpt = "cpu", dtype: DtypeOpt = "auto", threads: ComputeThreadsOpt = None) -> None:
    """Perplexity of a text file (sliding windows)."""
    apply_thread_policy(threads)
    from matlab.core.text import text_perplexity

    with reported_errors():
        value, count = text_perplexity(load_submodel(checkpoint, config, device, dtype),
                                       file.read_text(encoding="utf-8"), window)
    say(f"perplexity {value:.4f} over {count} tokens")


def train_nano_command(out: Annotated[Path, typer.Option("--out", help="Output checkpoint directory.")],
                       steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
                       seed: int = 0,
                       control: Annotated[bool, typer.Option(help="Train at full size only (no nesting).")] = False,
                       device: Annotated[str, typer.Option(help="Torch device to train on (cpu, cuda).")] = "cpu",
                       force: ForceOpt = False) -> None:
    """Train the nano Gemma 3n as a MatFormer (or the full-size-only control), seeded."""
    from matlab.io.staging import check_output
    from matlab.nano.checkpoint import save_nano
    from matlab.nano.train import TrainSettings, train_nano

    command = shlex.join(["matformer", "train-nano", "--out", str(out), "--steps", str(steps), "--seed", str(seed),
                          *(["--control"] if control else []), *(["--device", device] if device != "cpu" else [])])
    settings = TrainSettings(steps=steps, seed=seed, matformer=not control, device=device)
    with reported_errors():
        check_output(out, force)
        with RichProgress() as progress:
            result = train_nano(settings, progress=progress)
        save_nano(result, settings, out, command, force=force)
    say(f"wrote {out} after {result.seconds / 60:.1f} minutes")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(score)
    app.command()(perplexity)
    app.command("train-nano")(train_nano_command)
