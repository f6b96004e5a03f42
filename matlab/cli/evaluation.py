"""Evaluation commands: eval one model on a suite, sweep many configs, report, the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from matlab.cli.common import (
    AdapterOpt,
    BosOpt,
    ComputeThreadsOpt,
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    GpusOpt,
    JsonOpt,
    LimitOpt,
    RayAddressOpt,
    RichProgress,
    SuiteOpt,
    ThreadsOpt,
    WorkersOpt,
    config_paths,
    console,
    pool_settings,
    quiet_evaluation,
    reported_errors,
    run_dtype,
    say,
    shown,
)
from matlab.cli.running import load_submodel
from matlab.util.threads import apply_thread_policy


def eval_command(checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory, hub id or 'nano'.")],
                 suite: SuiteOpt, config: ConfigOpt = None, limit: LimitOpt = None, bos_policy: BosOpt = "lm-eval",
                 adapter: AdapterOpt = None, device: DeviceOpt = "cpu", dtype: DtypeOpt = "auto",
                 as_json: JsonOpt = False, threads: ComputeThreadsOpt = None) -> None:
    """Evaluate one model (or one elastic slice) on a suite."""
    apply_thread_policy(threads)
    from matlab.harness.evaluate import evaluate_submodel
    from matlab.harness.hub_data import require_datasets
    from matlab.harness.lm import check_bos_policy
    from matlab.harness.suite import load_suite
    from matlab.slice_config.bundled import resolve_suite

    with reported_errors(), quiet_evaluation():
        loaded_suite = load_suite(resolve_suite(suite))
        require_datasets(loaded_suite)
        submodel = load_submodel(checkpoint, config, device, dtype, adapter=adapter)
        scores = evaluate_submodel(submodel, loaded_suite, limit=limit, bos_policy=check_bos_policy(bos_policy))
    if as_json:
        console.print_json(json.dumps({"model": checkpoint, "config": submodel.name, "suite": loaded_suite.name,
                                       "bos_policy": bos_policy, "scores": [score.as_dict() for score in scores]}))
        return
    table = Table("task", "metric", "value", "stderr", "n", title=shown(f"{submodel.name} on {loaded_suite.name}"))
    for score in scores:
        table.add_row(shown(score.task), shown(score.metric), f"{score.value:.4f}",
                      "" if score.stderr is None else f"{score.stderr:.4f}", str(score.samples))
    console.print(table)


def sweep(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory, hub id or 'nano'.")],
          configs: Annotated[list[str], typer.Option("--configs", help="Config files, folders of them, or a bundled "
                                                                        "set's name (nano, gemma-3n-e4b).")],
          suite: SuiteOpt, out: Annotated[Path, typer.Option("--out", help="Run directory (resumable).")],
          limit: LimitOpt = None,
          materialize: Annotated[bool, typer.Option(help="Slice each config to disk instead of elastic.")] = False,
          bos_policy: BosOpt = "lm-eval",
          latency_rounds: Annotated[int, typer.Option(min=1, help="Round-robin latency rounds.")] = 5,
          adapter: AdapterOpt = None, workers: WorkersOpt = None, ray_address: RayAddressOpt = None,
          gpus_per_worker: GpusOpt = None, threads_per_worker: ThreadsOpt = None,
          device: DeviceOpt = "cpu", dtype: DtypeOpt = "auto", threads: ComputeThreadsOpt = None) -> None:
    """Evaluate many slice configs; a killed sweep resumes where it stopped."""
    apply_thread_policy(threads)
    from matlab.harness.lm import check_bos_policy
    from matlab.harness.suite import load_suite
    from matlab.harness.sweep import SweepSettings, run_sweep
    from matlab.slice_config.bundled import resolve_suite

    with reported_errors(resumes=out), quiet_evaluation(), RichProgress() as progress:
        paths = config_paths(configs)
        settings = SweepSettings(load_suite(resolve_suite(suite)), limit=limit, materialize=materialize, device=device,
                                 dtype=run_dtype(checkpoint, dtype, device), bos_policy=check_bos_policy(bos_policy),
                                 latency_rounds=latency_rounds,
                                 adapter=adapter)
        evaluated = run_sweep(checkpoint, paths, out, settings, progress=progress,
                              pool=pool_settings(workers, ray_address, gpus_per_worker, threads_per_worker))
    say(f"{len(evaluated)} config(s) evaluated, {len(paths) - len(evaluated)} already done; "
        f"results in {out / 'results.jsonl'}")


def report(run_dir: Annotated[Path, typer.Argument(help="A sweep's run directory.")],
           out: Annotated[Path, typer.Option("--out", help="Report directory (index.html).")],
           compare: Annotated[Optional[Path], typer.Option(help="Another run to overlay (the demo's OUT/control).")
                              ] = None,
           compare_label: Annotated[str, typer.Option(help="Legend label of --compare.")] = "compared run",
           search: Annotated[Optional[Path], typer.Option(
               help="A `matformer search` directory whose found configs to draw beside the run's (the demo's "
                    "OUT/search; automatic when RUN_DIR is a search's confirm run).")] = None,
           force: ForceOpt = False) -> None:
    """Write a self-contained HTML report of a sweep (and of a search's results).

    The demo's own report, rebuilt from its --out OUT: matformer report OUT/sweep --out OUT/report
    --search OUT/search --compare OUT/control --compare-label "control (trained at full size only)" --force
    """
    from matlab.report.report import build_report

    with reported_errors():
        path = build_report(run_dir, out, compare=compare, compare_label=compare_label, force=force, search=search)
    say(f"wrote {path}")


def demo(out: Annotated[Path, typer.Option("--out", help="Where the demo writes everything.")] = Path("matformer-demo"),
         limit: Annotated[Optional[int], typer.Option(
             "--limit", min=1, help="A quick run of every stage: at most this many documents per task, and a "
                                    "search scaled down with it (10: about a minute on 2 cores).")] = None,
                                    threads: ComputeThreadsOpt = None) -> None:
    """The main job on the embedded nano model: slice one config, sweep all nano configs on the
    nano suite (and the control on two), search for the best slices below nano-E2B and confirm
    them on the suite, write the HTML report.

    Ctrl-C stops it; the same command resumes it."""
    apply_thread_policy(threads)
    from matlab.demo import run_demo

    say(f"the demo writes everything under {out.resolve()} (a slice, a sweep, a search, the report)")
    with reported_errors(resumes=out), quiet_evaluation(search=True), RichProgress() as progress:
        result = run_demo(out, limit=limit, progress=progress)
    say(f"sliced nano-E2B to {result.sliced}\nsweep results in {result.sweep / 'results.jsonl'}\n"
        f"search results in {result.search} (frontier/*.yaml, confirmed in confirm/)\nreport: {result.report}")


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_command)
    app.command()(sweep)
    app.command()(report)
    app.command()(demo)
