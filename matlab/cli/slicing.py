"""Slicing commands: import and validate configs, count parameters, slice, synthesize."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from matlab.cli.common import (
    ArchOpt,
    CheckpointOpt,
    ForceOpt,
    GuardedGroup,
    JsonOpt,
    RichProgress,
    console,
    errors,
    facts_of,
    fail_line,
    parse_size_option,
    reported_errors,
    say,
    shown,
    warn_line,
)
from matlab.runtimes import MODULES

RuntimeOpt = Annotated[Optional[str], typer.Option(
    "--runtime", help=f"{', '.join(MODULES)}: also check the config against its "
                      "assumptions (slice: and write the config as it reads it).")]

configs_app = typer.Typer(help="Slice config files.", no_args_is_help=True, cls=GuardedGroup)


@configs_app.command("import")
def configs_import(csv_path: Annotated[Path, typer.Argument(help="Google's slicing-configs CSV.")],
                   out: Annotated[Path, typer.Option("--out", help="Directory for the YAML files.")],
                   base: Annotated[Optional[str], typer.Option(help="Architecture the configs target.")] = None,
                   force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False) -> None:
    """Convert every row of an official slicing-configs CSV into a slice config YAML."""
    from matlab.slice_config.csv_import import import_official_csv

    with reported_errors():
        written = import_official_csv(csv_path, out, base=base, force=force)
    for path in written:
        say(f"wrote {path}")


def validate(configs: Annotated[list[Path], typer.Argument(help="Slice config YAML files.")],
             checkpoint: CheckpointOpt = None, arch: ArchOpt = None, runtime: RuntimeOpt = None) -> None:
    """Check slice configs against an architecture (and a runtime's assumptions); report every
    problem, exit 1 if any is an error. With --checkpoint, its weights' headers are checked too."""
    from matlab.io.reader import CheckpointFiles, has_weights
    from matlab.slicing.checks import check_config_files

    with reported_errors():
        facts, directory = facts_of(checkpoint, arch)
        if directory is not None and has_weights(directory):  # a config.json alone is checked as a config
            CheckpointFiles(directory)
        report = check_config_files(configs, facts, runtime)
    failed = 0
    for path, problems in report.items():
        bad = [problem for problem in problems if problem.severity == "error"]
        failed += bool(bad)
        for problem in problems:
            (fail_line if problem.severity == "error" else warn_line)(str(problem))
        if not bad:
            console.print(f"[green]ok[/] {shown(str(path))}", highlight=False)
    if failed:
        errors.print(f"{failed} of {len(report)} config(s) invalid", highlight=False)
        raise typer.Exit(1)


def params(checkpoint: CheckpointOpt = None, arch: ArchOpt = None,
           config: Annotated[Optional[Path], typer.Option("--config", help="Slice config to account.")] = None,
           text_only: Annotated[bool, typer.Option(help="Account the text-only checkpoint.")] = False,
           as_json: JsonOpt = False) -> None:
    """Exact parameter counts of a model or of a slice of it."""
    from matlab.arch.inventory import inventory_from_checkpoint, inventory_from_facts
    from matlab.plan import SlicePlan
    from matlab.plan.accounting import count_parameters
    from matlab.slice_config import load_slice_config

    with reported_errors():
        facts, directory = facts_of(checkpoint, arch)
        inventory = inventory_from_checkpoint(directory) if directory else inventory_from_facts(facts, text_only)
        slice_config = load_slice_config(config) if config else None
        plan = SlicePlan.build(slice_config, facts, str(config)) if slice_config else None
        report = count_parameters(inventory, facts, plan, text_only=text_only)
    stated = slice_config.reference.effective_params_b if slice_config and slice_config.reference else None
    if as_json:
        payload = {**report.as_dict(), "model": facts.name, "config": slice_config.name if slice_config else None,
                   "stated_effective_params_b": stated}
        console.print_json(json.dumps(payload))
        return
    table = Table(title=shown(f"{facts.name}" + (f" sliced by {slice_config.name}" if slice_config else "")))
    table.add_column("parameters")
    table.add_column("count", justify="right")
    table.add_column("stated", justify="right")
    rows = [("effective", report.effective_params), ("per-layer embeddings (PLE)", report.ple_params),
            ("token embeddings", report.embedding_params), ("text total", report.text_params),
            ("audio tower", report.audio_params), ("vision tower", report.vision_params),
            ("multimodal embedders", report.multimodal_embedder_params), ("total", report.total_params)]
    for label, count in rows:
        table.add_row(label, f"{count:,}", f"{stated}B" if label == "effective" and stated is not None else "")
    table.add_row(f"bytes ({report.dtype})", f"{report.total_bytes:,}", "")
    if report.format_bytes is not None:
        table.add_row(f"GGUF text tensor bytes ({report.formats})", f"{report.format_bytes:,}", "")
    console.print(table)
    for warning in plan.warnings if plan else ():
        warn_line(str(warning))
    for fallback in report.format_fallbacks:
        warn_line(f"{config}: weight_formats: {fallback}")


def slice_command(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory or hub id.")],
                  config: Annotated[Path, typer.Option("--config", help="Slice config YAML.")],
                  out: Annotated[Path, typer.Option("--out", help="Output directory.")],
                  text_only: Annotated[bool, typer.Option(help="Drop audio/vision; write a text-only checkpoint.")
                                       ] = False,
                  max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB.")] = "5GB",
                  verify_all: Annotated[bool, typer.Option(
                      help="Compare every byte of the output with the source before publishing it "
                           "(default: the first, middle and last row of every tensor).")] = False,
                  runtime: RuntimeOpt = None,
                  adapter: Annotated[Optional[Path], typer.Option(
                      "--adapter", help="A PEFT LoRA adapter trained on CHECKPOINT: cut the same way, written to "
                                        "OUT/adapter (load it with PeftModel.from_pretrained).")] = None,
                  force: ForceOpt = False) -> None:
    """Write a sliced checkpoint with bounded memory; the output appears only when complete and read back."""
    from matlab.io.resolve import resolve_checkpoint
    from matlab.slice_config import load_slice_config
    from matlab.slicing.slicer import slice_checkpoint

    shard_bytes = parse_size_option(max_shard_size, "--max-shard-size")
    command = shlex.join(["matformer", "slice", checkpoint, "--config", str(config), "--out", str(out),
                          *(["--text-only"] if text_only else []), "--max-shard-size", max_shard_size,
                          *(["--runtime", runtime] if runtime else []),
                          *(["--adapter", str(adapter)] if adapter else [])])
    with reported_errors(), RichProgress("bytes") as progress:
        result = slice_checkpoint(
            resolve_checkpoint(checkpoint), load_slice_config(config), out, config_source=str(config),
            text_only=text_only, max_shard_bytes=shard_bytes, force=force, command=command, verify_all=verify_all,
            runtime=runtime, adapter=adapter, progress=progress)
    for warning in result.warnings:
        warn_line(str(warning))
    say(f"wrote {result.out}: {len(result.plan.kept_layers)} layers, {result.tensors_written} tensors in "
        f"{result.shards} shard(s), {result.bytes_written:,} bytes ({result.bytes_verified:,} read back and compared "
        f"with the source); effective parameters {result.params.effective_params:,}")
    if result.adapter is not None:
        say(f"wrote {result.out / 'adapter'}: LoRA rank {result.adapter.rank}, {result.adapter.tensors_kept} tensors "
            f"kept, {result.adapter.tensors_dropped} of skipped layers dropped")


def synth(out: Annotated[Path, typer.Option("--out", help="Output directory.")],
          arch: ArchOpt = None,
          like: Annotated[Optional[str], typer.Option("--like", help="Copy the architecture of this checkpoint.")
                          ] = None,
          text_only: Annotated[bool, typer.Option(help="Write a text-only checkpoint.")] = False,
          seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
          max_shard_size: Annotated[str, typer.Option(help="Largest shard, e.g. 5GB.")] = "5GB",
          force: ForceOpt = False) -> None:
    """Write a random checkpoint with the exact tensor names, shapes and dtype of an architecture."""
    from matlab.slicing.synth import synthesize_checkpoint

    shard_bytes = parse_size_option(max_shard_size, "--max-shard-size")
    with reported_errors():
        facts, directory = facts_of(like, arch)
        with RichProgress("bytes") as progress:
            synthesize_checkpoint(facts, out, text_only=text_only, seed=seed, force=force,
                                  max_shard_bytes=shard_bytes, like=directory, progress=progress)
    say(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(configs_app, name="configs")
    app.command()(validate)
    app.command()(params)
    app.command(name="slice")(slice_command)
    app.command()(synth)
