"""The `matformer` command: each subcommand parses options, calls one library function, prints.

Heavy imports (torch, transformers) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import json
import os
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from matlab.errors import MatformerError

# lm-evaluation-harness draws tqdm bars per request batch; they would tear through the rich
# progress display, which already reports the sweep.
os.environ.setdefault("TQDM_DISABLE", "1")

app = typer.Typer(help="MatFormer Lab: slice, run, evaluate and compare Gemma 3n MatFormer submodels.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
configs_app = typer.Typer(help="Slice config files.", no_args_is_help=True)
app.add_typer(configs_app, name="configs")

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

CheckpointOpt = Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint directory or hub id.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Bundled architecture, e.g. gemma-3n-e4b.")]


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn library errors into one red line on stderr and the error's exit code."""
    try:
        yield
    except MatformerError as error:
        errors.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
        raise typer.Exit(error.exit_code) from None


def _shard_size(text: str) -> int:
    from matlab.io.writer import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        errors.print(f"[bold red]error:[/] --max-shard-size: {error}", highlight=False)
        raise typer.Exit(2) from None


def _facts(checkpoint: str | None, arch: str | None):
    from matlab.architecture import facts_from_arch, facts_from_checkpoint
    from matlab.resolve import resolve_checkpoint

    if (checkpoint is None) == (arch is None):
        errors.print("[bold red]error:[/] give exactly one of --checkpoint or --arch", highlight=False)
        raise typer.Exit(2)
    if arch is not None:
        return facts_from_arch(arch), None
    directory = resolve_checkpoint(checkpoint)
    return facts_from_checkpoint(directory), directory


@configs_app.command("import")
def configs_import(csv_path: Annotated[Path, typer.Argument(help="Google's slicing-configs CSV.")],
                   out: Annotated[Path, typer.Option("--out", help="Directory for the YAML files.")],
                   base: Annotated[Optional[str], typer.Option(help="Architecture the configs target.")] = None,
                   force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False) -> None:
    """Convert every row of an official slicing-configs CSV into a slice config YAML."""
    from matlab.csv_import import import_official_csv

    with reported_errors():
        written = import_official_csv(csv_path, out, base=base, force=force)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


@app.command()
def validate(configs: Annotated[list[Path], typer.Argument(help="Slice config YAML files.")],
             checkpoint: CheckpointOpt = None, arch: ArchOpt = None) -> None:
    """Check slice configs against an architecture; report every problem, exit 1 if any is an error."""
    from matlab.validation import check_config_files

    with reported_errors():
        facts, _ = _facts(checkpoint, arch)
        report = check_config_files(configs, facts)
    failed = 0
    for path, problems in report.items():
        bad = [problem for problem in problems if problem.severity == "error"]
        failed += bool(bad)
        for problem in problems:
            style = "red" if problem.severity == "error" else "yellow"
            errors.print(f"[{style}]{problem.severity}:[/] {problem}", highlight=False)
        if not bad:
            console.print(f"[green]ok[/] {path}", highlight=False)
    if failed:
        errors.print(f"{failed} of {len(report)} config(s) invalid", highlight=False)
        raise typer.Exit(1)


@app.command()
def params(checkpoint: CheckpointOpt = None, arch: ArchOpt = None,
           config: Annotated[Optional[Path], typer.Option("--config", help="Slice config to account.")] = None,
           text_only: Annotated[bool, typer.Option(help="Account the text-only checkpoint.")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Exact parameter counts of a model or of a slice of it."""
    from matlab.accounting import count_parameters
    from matlab.inventory import inventory_from_checkpoint, inventory_from_facts
    from matlab.plan import SlicePlan
    from matlab.slice_config import load_slice_config

    with reported_errors():
        facts, directory = _facts(checkpoint, arch)
        inventory = inventory_from_checkpoint(directory) if directory else inventory_from_facts(facts)
        slice_config = load_slice_config(config) if config else None
        plan = SlicePlan.build(slice_config, facts, str(config)) if slice_config else None
        report = count_parameters(inventory, facts, plan, text_only=text_only)
    stated = slice_config.reference.effective_params_b if slice_config and slice_config.reference else None
    if as_json:
        payload = {**report.as_dict(), "model": facts.name, "config": slice_config.name if slice_config else None,
                   "stated_effective_params_b": stated}
        console.print_json(json.dumps(payload))
        return
    title = f"{facts.name}" + (f" sliced by {slice_config.name}" if slice_config else "")
    table = Table(title=title)
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
    console.print(table)
    if plan:
        for warning in plan.warnings:
            errors.print(f"[yellow]warning:[/] {warning}", highlight=False)


@app.command(name="slice")
def slice_command(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory or hub id.")],
                  config: Annotated[Path, typer.Option("--config", help="Slice config YAML.")],
                  out: Annotated[Path, typer.Option("--out", help="Output directory.")],
                  text_only: Annotated[bool, typer.Option(help="Drop audio/vision; write a gemma3n_text checkpoint.")] = False,
                  max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB.")] = "5GB",
                  force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False) -> None:
    """Write a sliced checkpoint with bounded memory; the output appears only when complete."""
    from matlab.resolve import resolve_checkpoint
    from matlab.slice_config import load_slice_config
    from matlab.slicer import slice_checkpoint

    shard_bytes = _shard_size(max_shard_size)
    command = shlex.join(["matformer", "slice", checkpoint, "--config", str(config), "--out", str(out),
                          *(["--text-only"] if text_only else []), "--max-shard-size", max_shard_size])
    progress, on_start, advance = _byte_progress("slicing")
    with reported_errors(), progress:
        result = slice_checkpoint(
            resolve_checkpoint(checkpoint), load_slice_config(config), out, config_source=str(config),
            text_only=text_only, max_shard_bytes=shard_bytes, force=force, command=command,
            on_start=on_start, progress=advance)
    for warning in result.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"wrote {result.out}: {len(result.plan.kept_layers)} layers, {result.tensors_written} tensors in "
                  f"{result.shards} shard(s), {result.bytes_written:,} bytes; effective parameters "
                  f"{result.params.effective_params:,}", highlight=False)


def _byte_progress(description: str):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(f"{description} ", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=errors, transient=True)
    task = progress.add_task(description, total=None)
    return progress, (lambda total: progress.update(task, total=total)), (lambda n: progress.advance(task, n))


@app.command()
def synth(out: Annotated[Path, typer.Option("--out", help="Output directory.")],
          arch: ArchOpt = None,
          like: Annotated[Optional[str], typer.Option("--like", help="Copy the architecture of this checkpoint.")] = None,
          text_only: Annotated[bool, typer.Option(help="Write a gemma3n_text checkpoint.")] = False,
          seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
          max_shard_size: Annotated[str, typer.Option(help="Largest shard, e.g. 5GB.")] = "5GB",
          force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False) -> None:
    """Write a random checkpoint with the exact tensor names, shapes and dtype of an architecture."""
    from matlab.synth import synthesize_checkpoint

    with reported_errors():
        facts, _ = _facts(like, arch)
        progress, on_start, advance = _byte_progress("writing")
        with progress:
            synthesize_checkpoint(facts, out, text_only=text_only, seed=seed, force=force,
                                  max_shard_bytes=_shard_size(max_shard_size), on_start=on_start, progress=advance)
    console.print(f"wrote {out}", highlight=False)


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Run this slice elastically from the full model.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16 or float16.")]


def _submodel(checkpoint: str, config: Path | None, device: str, dtype: str):
    from matlab.core.loading import DTYPES, load_model
    from matlab.core.submodel import select_submodel
    from matlab.slice_config import load_slice_config

    if dtype not in DTYPES:
        raise typer.BadParameter(f"choose one of {', '.join(DTYPES)}", param_hint="--dtype")
    slice_config = load_slice_config(config) if config else None
    submodel = select_submodel(load_model(checkpoint, device=device, dtype=dtype), slice_config, str(config))
    for warning in submodel.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return submodel


@app.command()
def generate(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
             prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
             config: ConfigOpt = None,
             max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
             temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 0.0,
             top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
             seed: int = 0, device: DeviceOpt = "cpu", dtype: DtypeOpt = "float32") -> None:
    """Continue a prompt (greedy by default, with a KV cache)."""
    from matlab.core.text import generate_text

    with reported_errors():
        submodel = _submodel(checkpoint, config, device, dtype)
        text = generate_text(submodel, prompt, max_new_tokens, temperature, top_p, seed)
    console.print(text, markup=False, highlight=False)


@app.command()
def score(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
          text: Annotated[str, typer.Option("--text", help="Text to score.")],
          config: ConfigOpt = None, device: DeviceOpt = "cpu", dtype: DtypeOpt = "float32",
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Per-token log-probabilities of a text."""
    from matlab.core.text import score_text

    with reported_errors():
        result = score_text(_submodel(checkpoint, config, device, dtype), text)
    if as_json:
        console.print_json(json.dumps(result.as_dict()))
        return
    table = Table("token", "logprob")
    for token, logprob in zip(result.tokens, result.logprobs):
        table.add_row(repr(token), f"{logprob:.4f}")
    console.print(table)
    console.print(f"total log-probability {result.total_logprob:.4f} over {len(result.tokens)} tokens")


@app.command()
def perplexity(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
               file: Annotated[Path, typer.Option("--file", help="UTF-8 text file.", exists=True, dir_okay=False)],
               config: ConfigOpt = None, window: Annotated[int, typer.Option(min=2)] = 512,
               device: DeviceOpt = "cpu", dtype: DtypeOpt = "float32") -> None:
    """Perplexity of a text file (sliding windows)."""
    from matlab.core.text import text_perplexity

    with reported_errors():
        value, count = text_perplexity(_submodel(checkpoint, config, device, dtype),
                                       file.read_text(encoding="utf-8"), window)
    console.print(f"perplexity {value:.4f} over {count} tokens", highlight=False)


@app.command("train-nano")
def train_nano_command(out: Annotated[Path, typer.Option("--out", help="Output checkpoint directory.")],
                       steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
                       seed: int = 0,
                       control: Annotated[bool, typer.Option(help="Train at full size only (no nesting).")] = False,
                       device: Annotated[str, typer.Option(help="Torch device to train on (cpu, cuda).")] = "cpu",
                       force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False) -> None:
    """Train the nano Gemma 3n as a MatFormer (or the full-size-only control), seeded."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from matlab.io.staging import check_output
    from matlab.nano.checkpoint import save_nano
    from matlab.nano.train import TrainSettings, train_nano

    command = shlex.join(["matformer", "train-nano", "--out", str(out), "--steps", str(steps), "--seed", str(seed),
                          *(["--control"] if control else []), *(["--device", device] if device != "cpu" else [])])
    settings = TrainSettings(steps=steps, seed=seed, matformer=not control, device=device)
    progress = Progress("training {task.fields[granularity]:>8} loss {task.fields[loss]:.3f}", BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=errors)
    with reported_errors():
        check_output(out, force)
        with progress:
            task = progress.add_task("train", total=steps, granularity="", loss=0.0)
            result = train_nano(settings, on_step=lambda step, granularity, loss: progress.update(
                task, completed=step + 1, granularity=granularity, loss=loss))
        save_nano(result, settings, out, command, force=force)
    console.print(f"wrote {out} after {result.seconds / 60:.1f} minutes", highlight=False)


SuiteOpt = Annotated[Path, typer.Option("--suite", help="Suite YAML, e.g. evals/nano.yaml.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many documents per task.")]


@app.command(name="eval")
def eval_command(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, hub id or 'nano'.")],
                 suite: SuiteOpt, config: ConfigOpt = None, limit: LimitOpt = None,
                 device: DeviceOpt = "cpu", dtype: DtypeOpt = "float32",
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Evaluate one model (or one elastic slice) on a suite."""
    from matlab.harness.evaluate import evaluate_submodel
    from matlab.harness.suite import load_suite

    with reported_errors():
        loaded_suite = load_suite(suite)
        submodel = _submodel(checkpoint, config, device, dtype)
        scores = evaluate_submodel(submodel, loaded_suite, limit=limit)
    if as_json:
        console.print_json(json.dumps({"model": checkpoint, "config": submodel.name, "suite": loaded_suite.name,
                                       "scores": [score.as_dict() for score in scores]}))
        return
    table = Table("task", "metric", "value", "stderr", "n", title=f"{submodel.name} on {loaded_suite.name}")
    for score in scores:
        table.add_row(score.task, score.metric, f"{score.value:.4f}",
                      "" if score.stderr is None else f"{score.stderr:.4f}", str(score.samples))
    console.print(table)


def _config_paths(entries: list[Path]) -> list[Path]:
    """Config files named directly or found in named folders (*.yaml), each once, sorted."""
    return sorted({path for entry in entries for path in (entry.glob("*.yaml") if entry.is_dir() else [entry])})


def _sweep_progress():
    """A rich progress display for sweeps (one bar per sweep: configs done of total, the config
    being evaluated, elapsed and remaining time) and the event handler that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=errors)
    tasks: list = []

    def on_event(event: str, info: dict) -> None:
        if event == "start":
            tasks.append(progress.add_task("sweep", total=info["total"], completed=info["done"]))
        elif event == "config":
            progress.update(tasks[-1], description=f"evaluating {info['name']}")
        elif event == "done":
            progress.advance(tasks[-1])

    return progress, on_event


@app.command()
def sweep(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory, hub id or 'nano'.")],
          configs: Annotated[list[Path], typer.Option("--configs", help="Config files or folders of them.")],
          suite: SuiteOpt, out: Annotated[Path, typer.Option("--out", help="Run directory (resumable).")],
          limit: LimitOpt = None,
          materialize: Annotated[bool, typer.Option(help="Slice each config to disk instead of elastic.")] = False,
          device: DeviceOpt = "cpu", dtype: DtypeOpt = "float32") -> None:
    """Evaluate many slice configs; a killed sweep resumes where it stopped."""
    from matlab.harness.suite import load_suite
    from matlab.harness.sweep import SweepSettings, run_sweep

    paths = _config_paths(configs)
    progress, on_event = _sweep_progress()
    with reported_errors(), progress:
        settings = SweepSettings(load_suite(suite), limit=limit, materialize=materialize, device=device, dtype=dtype)
        evaluated = run_sweep(checkpoint, paths, out, settings, progress=on_event)
    console.print(f"{len(evaluated)} config(s) evaluated, {len(paths) - len(evaluated)} already done; "
                  f"results in {out / 'results.jsonl'}", highlight=False)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A sweep's run directory.")],
           out: Annotated[Path, typer.Option("--out", help="Report directory (index.html).")],
           compare: Annotated[Optional[Path], typer.Option(help="Another run to overlay.")] = None,
           compare_label: Annotated[str, typer.Option(help="Legend label of --compare.")] = "compared run",
           force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False) -> None:
    """Write a self-contained HTML report of a sweep."""
    from matlab.harness.report import build_report

    with reported_errors():
        path = build_report(run_dir, out, compare=compare, compare_label=compare_label, force=force)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def demo(out: Annotated[Path, typer.Option("--out", help="Where the demo writes everything.")] = Path("matformer-demo"),
         limit: LimitOpt = None) -> None:
    """The main job on the embedded nano model: slice one config, sweep all nano configs on the
    nano suite (and the control on two), write the HTML report."""
    from matlab.harness.demo import run_demo

    progress, on_event = _sweep_progress()
    with reported_errors(), progress:
        result = run_demo(out, limit=limit, progress=on_event)
    console.print(f"sliced nano-E2B to {result.sliced}\nsweep results in {result.sweep / 'results.jsonl'}\n"
                  f"report: {result.report}", highlight=False)


bench_app = typer.Typer(help="Benchmarks (numbers measured on this machine, ratios within one run).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("slice")
def bench_slice_command(checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Full checkpoint directory.")],
                        config: Annotated[Path, typer.Option("--config", help="Slice config YAML.")],
                        work_dir: Annotated[Path, typer.Option(help="Scratch space for outputs.")] = Path("bench-work"),
                        text_only: Annotated[bool, typer.Option(help="Benchmark --text-only slicing.")] = False,
                        repeat: Annotated[int, typer.Option(min=1)] = 1,
                        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Our slicer vs a notebook-style naive slicer vs copying the output's bytes."""
    from matlab.bench.slice_bench import bench_slice

    with reported_errors():
        result = bench_slice(checkpoint, config, work_dir, text_only=text_only, repeat=repeat)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("method", "seconds", "peak RSS (MiB)", "read (MB)", "written (MB)",
                  title=f"slicing {checkpoint} with {config}{' --text-only' if text_only else ''}")
    for method, numbers in result["methods"].items():
        table.add_row(method, f"{numbers['seconds']:.2f}", f"{numbers['peak_rss_bytes'] / 2**20:.0f}",
                      f"{numbers['bytes_read'] / 1e6:.0f}", f"{numbers['bytes_written'] / 1e6:.0f}")
    console.print(table)
    console.print(f"ours/naive time {result['ours_over_naive_seconds']:.2f}, ours/copy time "
                  f"{result['ours_over_copy_seconds']:.2f}, ours/naive peak RSS {result['ours_over_naive_rss']:.2f}; "
                  f"{result['tensors_verified_equal']} tensors read back equal", highlight=False)


@bench_app.command("sweep")
def bench_sweep_command(checkpoint: Annotated[str, typer.Option("--checkpoint", help="Full checkpoint, or nano.")],
                        configs: Annotated[list[Path], typer.Option("--configs", help="Config files or folders.")],
                        suite: SuiteOpt, limit: LimitOpt = None,
                        work_dir: Annotated[Path, typer.Option(help="Scratch space for the two runs.")] = Path(
                            "bench-work"),
                        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """An elastic sweep against a --materialize sweep: end-to-end time and identical scores."""
    from matlab.bench.sweep_bench import bench_sweep

    paths = _config_paths(configs)
    with reported_errors():
        result = bench_sweep(checkpoint, paths, suite, work_dir, limit=limit)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("mode", "sweep seconds", "peak RSS (MiB)", title=f"sweeping {len(paths)} configs of {checkpoint}")
    for mode, numbers in result["modes"].items():
        table.add_row(mode, f"{numbers['sweep_seconds']:.1f}", f"{numbers['peak_rss_bytes'] / 2**20:.0f}")
    console.print(table)
    console.print(f"materialize/elastic time {result['materialize_over_elastic_seconds']:.2f}; "
                  f"{result['scores_identical']} of {result['scores_compared']} scores identical "
                  f"(largest difference {result['max_score_difference']:.3g})", highlight=False)


@bench_app.command("switch")
def bench_switch_command(checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Full checkpoint directory.")],
                         config: Annotated[Path, typer.Option("--config", help="Slice config YAML.")],
                         dtype: DtypeOpt = "bfloat16",
                         work_dir: Annotated[Path, typer.Option(help="Scratch space for the slice.")] = Path(
                             "bench-work"),
                         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Switching cost: build an elastic submodel of a loaded model vs slice to disk and load."""
    from matlab.bench.sweep_bench import bench_switch

    with reported_errors():
        result = bench_switch(checkpoint, config, work_dir, dtype=dtype)
    if as_json:
        console.print_json(json.dumps(result))
        return
    elastic, disk = result["modes"]["elastic"], result["modes"]["materialize"]
    table = Table("step", "seconds", title=f"switching {checkpoint} to {config} ({dtype}, text only)")
    table.add_row("load the full model and warm it (once per sweep)",
                  f"{elastic['load_full_seconds'] + elastic['full_model_warmup_seconds']:.2f}")
    table.add_row("elastic: build the submodel (median)", f"{result['elastic_build_seconds']:.3f}")
    table.add_row("elastic: its first forward pass", f"{elastic['first_forward_seconds']:.2f}")
    table.add_row("disk: slice to disk", f"{disk['slice_seconds']:.2f}")
    table.add_row("disk: load the slice", f"{disk['load_slice_seconds']:.2f}")
    table.add_row("disk: its first forward pass", f"{disk['first_forward_seconds']:.2f}")
    console.print(table)
    console.print(f"disk/elastic switching time {result['disk_over_elastic']:.0f}x; peak RSS elastic "
                  f"{elastic['peak_rss_bytes'] / 2**30:.2f} GiB, disk {disk['peak_rss_bytes'] / 2**30:.2f} GiB; "
                  f"largest logit difference {result['max_logit_difference']:.3g}", highlight=False)


@bench_app.command("nano-capacity")
def bench_nano_capacity_command(
        people: Annotated[int, typer.Option(min=2, max=4096, help="People in the synthetic world (4 facts each).")] = 256,
        steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
        every: Annotated[int, typer.Option(min=1, help="Score the fact questions every this many steps.")] = 250,
        fact_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of training sentences that are facts.")
                              ] = 0.7,
        frozen_names: Annotated[bool, typer.Option(
            help="Keep the names' embedding rows at their random initial values, so facts must live in the layers.")
                                ] = False,
        ffn: Annotated[int, typer.Option(min=2, help="The full model's FFN width (nano ships with 512).")] = 512,
        seed: int = 0,
        threads: Annotated[int, typer.Option(min=0, help="Torch CPU threads (0: torch's default).")] = 0,
        device: Annotated[str, typer.Option(help="Torch device to train on (cpu, cuda).")] = "cpu",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Train nano as a MatFormer on a world of a given size; fact accuracy of nano-E4B, nano-E2B
    and nano-L4 (held-out frames) every few steps."""
    import torch

    from matlab.bench.nano_capacity import MEASURED, bench_capacity
    from matlab.nano.train import TrainSettings

    if threads:
        torch.set_num_threads(threads)
    command = shlex.join(["matformer", "bench", "nano-capacity", "--people", str(people), "--steps", str(steps),
                          "--every", str(every), "--fact-share", str(fact_share), "--ffn", str(ffn), "--seed", str(seed),
                          *(["--frozen-names"] if frozen_names else [])])
    settings = TrainSettings(steps=steps, seed=seed, people=people, fact_share=fact_share, frozen_names=frozen_names,
                             ffn=ffn, device=device)
    with reported_errors():
        # Points go to stderr as they are measured (stdout stays one JSON document with --json).
        result = bench_capacity(settings, every, on_point=lambda point: errors.print(
            f"step {point['step']}: " + ", ".join(f"{stem} {point[stem]:.3f}" for stem in MEASURED), highlight=False))
    result["command"] = command
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("step", *MEASURED, "E4B - E2B", title=f"fact accuracy, {people} people (chance {result['chance']:.3f})")
    for point in result["points"]:
        table.add_row(str(point["step"]), *(f"{point[stem]:.3f}" for stem in MEASURED),
                      f"{point['nano-e4b'] - point['nano-e2b']:+.3f}")
    console.print(table)
    console.print(f"{result['seconds'] / 60:.1f} minutes of training; reproduce: {command}", highlight=False)
