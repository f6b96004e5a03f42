"""Configs a benchmark chose, scored on a suite in one sweep (each distinct submodel once)."""

from __future__ import annotations

from pathlib import Path

from matlab.arch.facts import ArchFacts
from matlab.harness.results import read_results
from matlab.harness.suite import load_suite
from matlab.harness.sweep import SweepSettings, run_sweep
from matlab.plan import SlicePlan
from matlab.progress import Progress
from matlab.slice_config import SliceConfig, dump_slice_config


def sweep_chosen(checkpoint: str, facts: ArchFacts, chosen: dict[str, SliceConfig], suite: Path, run_dir: Path,
                 limit: int | None, progress: Progress) -> tuple[dict, dict[str, str]]:
    """Sweep `chosen` (name -> config, written as NAME.yaml beside `run_dir`) on `suite` into
    `run_dir` (resumed there). Returns each name's result rows, and for a name whose submodel an
    earlier name already holds, that name (a sweep takes each submodel once)."""
    folder = run_dir.parent / f"{run_dir.name}-configs"
    folder.mkdir(parents=True, exist_ok=True)
    first: dict[str, str] = {}  # submodel identity -> the first name that chose it
    same: dict[str, str] = {}
    for stem, config in chosen.items():
        identity = SlicePlan.build(config, facts, stem).submodel_id
        if identity in first:
            same[stem] = first[identity]
            continue
        first[identity] = stem
        (folder / f"{stem}.yaml").write_text(dump_slice_config(config.model_copy(update={"name": stem})),
                                             encoding="utf-8")
    run_sweep(checkpoint, sorted(folder.glob("*.yaml")), run_dir,
              SweepSettings(load_suite(suite), limit=limit, latency_rounds=1), progress=progress)
    frame = read_results(run_dir)
    rows = {stem: frame[frame["config_file"].str.endswith(f"/{same.get(stem, stem)}.yaml")] for stem in chosen}
    return rows, same
