"""Candidates per minute of `search --formats` against the search without formats
(`matformer bench formats-speed`).

Both search at one byte budget with the same evaluations, calibration and seed, alternating in
rounds on one machine so that a busy spell hits both. The plain search runs in float32 with
twice the bytes, so that it admits exactly the slices a bf16 file of the budget holds. At one
budget the two do not evaluate the same slices: quantized weights let far larger slices fit, and
a larger slice costs more to evaluate whatever its weights. So beside the raw rate this reports
the cost of the slices both searches evaluated (same skips and widths), which isolates what the
formats themselves add to a candidate.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from matlab.core.loading import load_model
from matlab.io.resolve import resolve_checkpoint
from matlab.progress import NO_PROGRESS, Progress
from matlab.search.journal import CANDIDATES_FILE, read_journal
from matlab.search.run import SearchSettings, run_search


def _shape(record: dict) -> tuple:
    return tuple(record["layers_skipped"]), tuple(record["ffn_widths"])


def _seconds(record: dict) -> float:
    return record["build_seconds"] + record["evaluate_seconds"]


def bench_formats_speed(checkpoint: str, max_bytes: int, formats: tuple[str, ...], work_dir: Path,
                        max_evals: int = 120, rounds: int = 2, seed: int = 0,
                        progress: Progress = NO_PROGRESS) -> dict:
    """Each search's rate and mean slice size, and per-slice cost ratios on the slices both evaluated."""
    load_model(resolve_checkpoint(checkpoint))  # a first load (file cache, imports) outside every timed search
    kinds = {"plain": {"max_bytes": 2 * max_bytes},
             **{f"formats-{genes}": {"max_bytes": max_bytes, "formats": formats, "format_genes": genes}
                for genes in ("group", "layer")}}
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind, fields in kinds.items():
            out = work_dir / f"{kind}-{round_}"
            # seeded-nsga2: the strategy the committed numbers (reports/benchmarks.md) were measured with
            summary = run_search(SearchSettings(checkpoint, out, max_evals=max_evals, seed=seed,
                                                strategy="seeded-nsga2", **fields),
                                 progress=progress).summary
            records, _ = read_journal(out / CANDIDATES_FILE, drop_torn=False)
            runs[kind].append({"candidates_per_minute": summary["timing"]["candidates_per_minute"],
                               "mean_effective_params": round(statistics.mean(r["effective_params"] for r in records)),
                               "mean_seconds_per_candidate": round(statistics.mean(map(_seconds, records)), 4),
                               "quantize_seconds": summary["timing"].get("quantize_seconds"),
                               "records": records})
    plain: dict[tuple, list[float]] = {}
    for run in runs["plain"]:
        for record in run["records"]:
            plain.setdefault(_shape(record), []).append(_seconds(record))
    result: dict = {"checkpoint": checkpoint, "max_bytes": max_bytes, "formats": list(formats),
                    "max_evals": max_evals, "rounds": rounds, "searches": {}}
    for kind, kind_runs in runs.items():
        ratios = [_seconds(record) / statistics.mean(plain[_shape(record)])
                  for run in kind_runs for record in run["records"] if _shape(record) in plain]
        result["searches"][kind] = {
            "rounds": [{key: value for key, value in run.items() if key != "records"} for run in kind_runs],
            "same_slices": len(ratios),
            "median_seconds_ratio_on_same_slices": round(statistics.median(ratios), 3) if ratios else None}
    return result
