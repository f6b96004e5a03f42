"""The search command: the best slices under a size budget, for a runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from matlab.cli.common import (
    AdapterOpt,
    ComputeThreadsOpt,
    DeviceOpt,
    DtypeOpt,
    GpusOpt,
    JsonOpt,
    LimitOpt,
    RayAddressOpt,
    RichProgress,
    ThreadsOpt,
    WorkersOpt,
    console,
    fail_line,
    pool_settings,
    quiet_evaluation,
    reported_errors,
    run_dtype,
    say,
    shown,
    usage_error,
    warn_line,
)
from matlab.runtimes import MODULES
from matlab.util.threads import apply_thread_policy


def _parse(text: str | None, option: str, parser):
    if text is None:
        return None
    try:
        return parser(text)
    except ValueError as error:
        raise usage_error(f"{option}: {error}") from None


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"cannot read {text!r}; write widths separated by commas, like 8192,16384") from None
    if not widths:
        raise ValueError("give at least one width")
    return widths


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(part.strip() for part in text.split(",") if part.strip())
    if not formats:
        raise ValueError("give at least one format, like q8_0,q4_0")
    return formats


def search(checkpoint: Annotated[str, typer.Argument(help="Full checkpoint directory, hub id or 'nano'.")],
           out: Annotated[Path, typer.Option("--out", help="Run directory (resumable).")],
           max_params: Annotated[Optional[str], typer.Option(
               help="Budget in effective parameters: 2.5B, 900M, 2_000_000.")] = None,
           max_bytes: Annotated[Optional[str], typer.Option(
               help="Budget in deployed weight bytes at --dtype: 3GB, 2.5GiB.")] = None,
           runtime: Annotated[Optional[str], typer.Option(
               help=f"Only slices this runtime loads: {', '.join(MODULES)}.")] = None,
           objective: Annotated[str, typer.Option(
               help="kl (to the full model's next-token distribution) or perplexity.")] = "kl",
           calibration: Annotated[Optional[Path], typer.Option(
               help="Text or JSONL ('text' per line) to measure on; required except for nano.")] = None,
           widths: Annotated[Optional[str], typer.Option(
               help="Allowed FFN widths, comma-separated (default: the trained ones).")] = None,
           formats: Annotated[Optional[str], typer.Option(
               help="GGUF weight formats to search with widths and skips, comma-separated (q8_0,q5_0,q4_0; "
                    "f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0); budgets and scores are then those of the "
                    "file at those formats. Needs --max-bytes.")] = None,
           adapter: AdapterOpt = None,
           baseline: Annotated[Optional[list[str]], typer.Option(
               help="With --formats: a llama.cpp file type (q4_k_m, q5_k_m, q6_k, q8_0, ...) measured on the full "
                    "model and each --baseline-config before the search, and compared with the frontier. "
                    "Repeatable.")] = None,
           baseline_config: Annotated[Optional[list[Path]], typer.Option(
               help="A slice config (YAML) measured at each --baseline too, e.g. the E2B config. "
                    "Repeatable.")] = None,
           format_genes: Annotated[str, typer.Option(
               help="With --formats: a format per layer for its attention and its FFN (group), or one per "
                    "layer (layer).")] = "group",
           max_evals: Annotated[int, typer.Option(min=1, help="Distinct candidates to evaluate.")] = 200,
           seed: Annotated[int, typer.Option(help="Seed of the evolutionary phase.")] = 0,
           strategy: Annotated[str, typer.Option(
               help="evopress (default; EvoPress), seeded-nsga2 (sensitivities, path, NSGA-II), or for "
                    "comparison nsga2, greedy, random.")] = "evopress",
           calibration_tokens: Annotated[int, typer.Option(min=16, help="Calibration tokens used.")] = 2048,
           window: Annotated[int, typer.Option(min=8, help="Tokens per calibration window.")] = 256,
           top_k: Annotated[int, typer.Option(min=1, help="Full-model tokens kept per position for kl.")] = 256,
           confirm_suite: Annotated[Optional[str], typer.Option(
               help="Evaluate the frontier on this suite afterwards (DIR/confirm, a sweep run).")] = None,
           limit: LimitOpt = None, workers: WorkersOpt = None, ray_address: RayAddressOpt = None,
           gpus_per_worker: GpusOpt = None, threads_per_worker: ThreadsOpt = None, device: DeviceOpt = "cpu",
           dtype: DtypeOpt = "auto",
           as_json: JsonOpt = False, threads: ComputeThreadsOpt = None) -> None:
    """Find the Pareto set of slices (cost against objective) under a budget; a killed search resumes."""
    apply_thread_policy(threads)
    from matlab.search.run import SearchSettings, run_search
    from matlab.slice_config.bundled import resolve_suite
    from matlab.slice_config.weight_formats import WeightFormats
    from matlab.util.sizes import parse_count, parse_size

    settings = SearchSettings(
        checkpoint, out, max_params=_parse(max_params, "--max-params", parse_count),
        max_bytes=_parse(max_bytes, "--max-bytes", parse_size), runtime=runtime, objective=objective,
        calibration=calibration, widths=_parse(widths, "--widths", _widths), max_evals=max_evals, seed=seed,
        formats=_parse(formats, "--formats", _formats), format_genes=format_genes, adapter=adapter,
        baselines=tuple(baseline or ()), baseline_configs=tuple(baseline_config or ()),
        device=device, dtype=run_dtype(checkpoint, dtype, device), calibration_tokens=calibration_tokens,
        window=window, top_k=top_k,
        strategy=strategy, confirm_limit=limit,
        pool=pool_settings(workers, ray_address, gpus_per_worker, threads_per_worker))
    with reported_errors(resumes=out), quiet_evaluation(search=True), RichProgress() as progress:
        if confirm_suite is not None:
            settings = SearchSettings(**{**settings.__dict__, "confirm_suite": resolve_suite(confirm_suite)})
        result = run_search(settings, progress=progress)
    for warning in result.warnings:
        warn_line(warning)
    summary = result.summary
    if as_json:
        console.print_json(json.dumps(summary.record))
    best = summary.best
    if best is None:
        fail_line(f"no candidate within the budget was evaluated in {summary.evaluated} evaluations; run again "
                  "with a larger --max-evals to go on")
        raise typer.Exit(1)
    if as_json:
        return
    frontier = summary.frontier
    with_formats = any(entry.weight_formats for entry in frontier)
    table = Table("frontier config", "effective params", "GGUF bytes" if with_formats else "weight bytes",
                  *(["formats"] if with_formats else []), summary.objective, "runs in",
                  title=shown(f"{summary.evaluated} candidates evaluated ({summary.evaluated_now} now), "
                               f"{summary.feasible} within budget"))
    for entry in frontier:
        formats_cell = [shown(WeightFormats.model_validate(entry.weight_formats).summary())
                        if entry.weight_formats else ""] if with_formats else []
        table.add_row(shown(entry.file), f"{entry.effective_params:,}", f"{entry.weight_bytes:,}",
                      *formats_cell, f"{entry.value:.4g}", ", ".join(entry.runs_in))
    console.print(table)
    for measured in summary.baselines:
        rival = summary.best_within(measured.weight_bytes)
        against = f"the frontier's best at no more bytes: {rival.name}, {rival.weight_bytes:,} bytes, " \
                  f"{summary.objective} {rival.value:.4g}" if rival else "no frontier slice is that small"
        say(f"baseline {shown(measured.name)}: {measured.weight_bytes:,} bytes, {summary.objective} "
            f"{measured.value:.4g}{'' if measured.within_budget else ' (over the budget)'}; {against}")
    timing = summary.timing
    say(f"{timing.candidates_per_minute:.0f} candidates/minute "
        f"(build {timing.build_seconds_per_candidate:.3f} s, "
        f"evaluate {timing.evaluate_seconds_per_candidate:.3f} s each); best: {best.file}; "
        f"results in {result.directory}" + (f"; confirmed in {result.confirm}" if result.confirm else ""))


def register(app: typer.Typer) -> None:
    app.command()(search)
