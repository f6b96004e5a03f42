"""The main job on the embedded nano model: slice, sweep, compare with the control, search, report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matlab.harness.suite import load_suite
from matlab.harness.sweep import SweepSettings, run_sweep
from matlab.io.resolve import embedded_available, resolve_checkpoint
from matlab.progress import NO_PROGRESS, Progress
from matlab.report.report import build_report
from matlab.search.run import SearchSettings, run_search
from matlab.slice_config import load_slice_config
from matlab.slice_config.bundled import resolve_config_entry, resolve_suite
from matlab.slicing.slicer import slice_checkpoint

CONTROL_CONFIGS = ("nano-e4b.yaml", "nano-e2b.yaml")
# The search's budget: below nano-E2B (2.38M effective parameters), where which layers are
# skipped decides the quality (a 45-minute CPU MatFormer cannot make FFN width bind).
SEARCH_BUDGET = 2_200_000
SEARCH_EVALS, SEARCH_CALIBRATION_TOKENS = 120, 1024
# Under --limit N the search shrinks with N, to the full run's from --limit FULL_SEARCH_AT on; but
# never below the evaluations that reach the budget (on nano the first ~45 go to the full
# model, every one-step move from it and the greedy path down to the budget) or two windows
# of calibration text.
FULL_SEARCH_AT = 128
LEAST_SEARCH_EVALS, LEAST_CALIBRATION_TOKENS = 50, 256
SEARCH_WINDOW = 128


@dataclass(frozen=True)
class DemoResult:
    sliced: Path
    sweep: Path
    control: Path | None
    search: Path
    report: Path


def demo_inputs() -> tuple[list[Path], Path]:
    """The nano slice configs and the nano suite (from the source checkout or the wheel)."""
    return resolve_config_entry("nano"), resolve_suite("nano")


def search_scale(limit: int | None) -> tuple[int, int]:
    """(max_evals, calibration_tokens) of the demo's search: the full run's, or with `limit`
    (documents per task) the share of them that `limit` is of FULL_SEARCH_AT, within the least."""
    share = 1.0 if limit is None else min(1.0, limit / FULL_SEARCH_AT)
    return (max(LEAST_SEARCH_EVALS, round(SEARCH_EVALS * share)),
            max(LEAST_CALIBRATION_TOKENS, round(SEARCH_CALIBRATION_TOKENS * share)))


def run_demo(out: Path, limit: int | None = None, progress: Progress = NO_PROGRESS) -> DemoResult:
    """Everything lands under `out`; finished sweeps are resumed, not redone."""
    configs, suite_path = demo_inputs()
    suite = load_suite(suite_path)
    nano = resolve_checkpoint("nano")
    e2b_config = next(path for path in configs if path.name == "nano-e2b.yaml")
    sliced = out / "nano-e2b"
    slice_checkpoint(nano, load_slice_config(e2b_config), sliced, config_source=str(e2b_config), force=True)
    settings = SweepSettings(suite, limit=limit)
    run_sweep(nano, configs, out / "sweep", settings, progress=progress)
    control = None
    if embedded_available("nano-control"):
        control = out / "control"
        control_configs = [path for path in configs if path.name in CONTROL_CONFIGS]
        run_sweep(resolve_checkpoint("nano-control"), control_configs, control, settings, progress=progress)
    max_evals, calibration_tokens = search_scale(limit)
    search = run_search(SearchSettings(
        "nano", out / "search", max_params=SEARCH_BUDGET, max_evals=max_evals, window=SEARCH_WINDOW,
        calibration_tokens=calibration_tokens, confirm_suite=suite_path, confirm_limit=limit), progress=progress)
    report = build_report(out / "sweep", out / "report", compare=control,
                          compare_label="control (trained at full size only)", force=True, search=search.directory)
    return DemoResult(sliced, out / "sweep", control, search.directory, report)
