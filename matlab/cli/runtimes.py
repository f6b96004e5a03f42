"""Runtime commands: install the real runtimes, run a slice in one (conform), export to GGUF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from matlab.cli.common import ForceOpt, GuardedGroup, JsonOpt, console, finite, reported_errors, say, shown
from matlab.runtimes import MODULES

runtimes_app = typer.Typer(help="The real runtimes conformance runs use, each in its own environment.",
                           no_args_is_help=True, cls=GuardedGroup)


@runtimes_app.command("install")
def install(names: Annotated[list[str], typer.Argument(
        help=f"Runtimes with an environment of their own, of {', '.join(MODULES)} (`matformer runtimes list`).")]
            ) -> None:
    """Create each runtime's virtual environment (under $MATFORMER_RUNTIMES, else ~/.cache/matformer/runtimes)."""
    from matlab.runtimes.envs import install_runtime

    with reported_errors():
        for name in names:
            install_runtime(name, say)


@runtimes_app.command("list")
def list_runtimes() -> None:
    """Which runtimes are installed, where, and their versions."""
    from matlab.runtimes import RUNTIMES
    from matlab.runtimes.envs import env_directory, installed_versions

    installed = installed_versions()
    for name, runtime in RUNTIMES.items():
        if runtime.environment is None:
            state = "runs in this environment" if runtime.runner else f"not installable: {runtime.unavailable}"
            say(f"{name}: {state}")
            continue
        state = f"installed ({runtime.requirement})" if name in installed else \
            f"not installed: `matformer runtimes install {name}` (about {runtime.environment.minutes} min)"
        say(f"{name}: {state} in {env_directory(name)}")


def conform(model: Annotated[Path, typer.Argument(help="A slice directory written by `matformer slice`.")],
            runtime: Annotated[str, typer.Option(help=f"One of {', '.join(MODULES)} with a runner (`runtimes list`).")],
            weight_type: Annotated[Optional[str], typer.Option(
                "--type", help="llama.cpp only: GGUF weight type (f32, f16, bf16, q8_0, q4_0, q4_k_m, ..., or "
                               "per-tensor: a type per tensor from the slice config's weight_formats).")] = None,
            tokens: Annotated[int, typer.Option(min=2, max=4096, help="Tokens compared.")] = 64,
            tolerance: Annotated[Optional[float], typer.Option(
                callback=finite,
                help="Largest log-prob difference still called 'runs' (default: by weight type).")] = None,
            seed: Annotated[int, typer.Option(help="Seed of the token ids.")] = 0,
            json_out: JsonOpt = False) -> None:
    """Run a slice in a real runtime and compare its next-token log-probs with transformers'.

    Exit 0 when it runs (within the tolerance), 1 when it loads but computes another model,
    refuses to load, or crashes; the runtime's own message is printed."""
    from matlab.runtimes.conform import conform as run_conformance

    with reported_errors(), console.status(f"running {runtime} and transformers on {model}"):
        result = run_conformance(model, runtime, weight_type=weight_type, count=tokens, tolerance=tolerance,
                                 seed=seed)
    if json_out:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        say(shown(result.line()))
    if not result.runs:
        raise typer.Exit(1)


def export(model: Annotated[Path, typer.Argument(help="A slice directory written by `matformer slice`.")],
           out: Annotated[Path, typer.Option("--out", help="The GGUF file to write.")],
           export_format: Annotated[str, typer.Option("--format", help="Only gguf.")] = "gguf",
           weight_type: Annotated[Optional[str], typer.Option(
               "--type", help="per-tensor (a type per tensor, from the slice config's weight_formats: the default "
                              "where it names them, else f16), f32, f16, bf16, q8_0 (llama.cpp's converter) or "
                              "q4_0, q4_k_m, q5_k_m, q6_k (its quantizer).")] = None,
           force: ForceOpt = False) -> None:
    """Write a slice as GGUF with llama.cpp's own converter (needs `matformer runtimes install llama.cpp`)."""
    from matlab.errors import InputError
    from matlab.runtimes.gguf import default_type, export_gguf

    with reported_errors(), console.status(f"converting {model} with llama.cpp's converter"):
        if export_format != "gguf":
            raise InputError(f"--format {export_format}: only gguf can be exported")
        weight_type = weight_type or default_type(model)
        written = export_gguf(model, out, weight_type, force)
    say(f"wrote {written} ({weight_type}, {written.stat().st_size:,} bytes); check it with "
        f"`matformer conform {model} --runtime llama.cpp --type {weight_type}`")


def register(app: typer.Typer) -> None:
    app.add_typer(runtimes_app, name="runtimes")
    app.command()(conform)
    app.command()(export)
