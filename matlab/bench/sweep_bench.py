"""Sweep benchmarks: an elastic sweep against a `--materialize` sweep on the same configs,
tasks and limit; and the cost of switching to one submodel (building it elastically from a
loaded full model, against slicing it to disk and loading the slice).

Every measured side runs in its own process, started the same way, so neither inherits the
other's warm caches or imports.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from matlab.bench.process import BenchError, drop_page_cache, run_measured


def _check_inputs(checkpoint: str | Path, configs: list[Path]) -> None:
    """Validate the checkpoint and every config here, so bad input stops with the library's own
    message (naming the field or layer) before any process starts or anything is written."""
    from matlab.arch.facts import facts_from_checkpoint
    from matlab.io.resolve import resolve_checkpoint
    from matlab.plan import SlicePlan
    from matlab.slice_config import load_slice_config

    facts = facts_from_checkpoint(resolve_checkpoint(checkpoint))
    for path in configs:
        SlicePlan.build(load_slice_config(path), facts, str(path))


def _scores(run_dir: Path) -> dict[tuple[str, str, str], float]:
    from matlab.harness.results import read_results

    frame = read_results(run_dir)
    return {(row.submodel_id, row.task, row.metric): float(row.value) for row in frame.itertuples()}


def bench_sweep(checkpoint: str, configs: list[Path], suite: Path, work_dir: Path,
                limit: int | None = None) -> dict:
    """Time an elastic and a materialized sweep end to end and compare every score they give."""
    from matlab.harness.suite import load_suite

    load_suite(suite)
    _check_inputs(checkpoint, configs)
    work_dir.mkdir(parents=True, exist_ok=True)
    measured = {}
    for mode in ("elastic", "materialize"):
        run_dir = work_dir / mode
        shutil.rmtree(run_dir, ignore_errors=True)
        args = [checkpoint, str(suite), str(run_dir), *map(str, configs),
                *(["--materialize"] if mode == "materialize" else []), *(["--limit", str(limit)] if limit else [])]
        inner, wall, rss = run_measured("matlab.bench.run_sweep", args)
        measured[mode] = {"sweep_seconds": inner["seconds"], "process_seconds": wall, "peak_rss_bytes": rss}
    elastic, materialized = _scores(work_dir / "elastic"), _scores(work_dir / "materialize")
    if set(elastic) != set(materialized):
        raise BenchError("the two sweeps produced different (config, task, metric) rows")
    differences = [abs(elastic[key] - materialized[key]) for key in elastic]
    return {"checkpoint": checkpoint, "configs": len(configs), "suite": str(suite), "limit": limit,
            "modes": measured, "scores_compared": len(differences),
            "scores_identical": sum(d == 0 for d in differences), "max_score_difference": max(differences),
            "materialize_over_elastic_seconds": measured["materialize"]["sweep_seconds"]
            / measured["elastic"]["sweep_seconds"]}


def bench_workers(checkpoint: str, configs: list[Path], suite: Path, work_dir: Path, limit: int | None = None,
                  workers: tuple[int, ...] = (1, 2)) -> dict:
    """A serial sweep against the same sweep on Ray with each number of `workers` (each side in
    its own process, starting its own local Ray): wall times, ratios, whether the rows are
    identical (timing fields aside), and the split of a serial sweep's time into loading the
    model once and evaluating each config, from which the scaling on more workers follows."""
    import time

    from matlab.core.loading import load_model
    from matlab.harness.results import RESULTS_FILE, TIMING_FIELDS, read_results
    from matlab.harness.suite import load_suite

    load_suite(suite)
    _check_inputs(checkpoint, configs)
    work_dir.mkdir(parents=True, exist_ok=True)
    measured, rows = {}, {}
    for count in (0, *workers):
        name = f"workers-{count}" if count else "serial"
        run_dir = work_dir / name
        shutil.rmtree(run_dir, ignore_errors=True)
        args = [checkpoint, str(suite), str(run_dir), *map(str, configs), *(["--limit", str(limit)] if limit else []),
                *(["--workers", str(count)] if count else [])]
        inner, wall, rss = run_measured("matlab.bench.run_sweep", args)
        measured[name] = {"sweep_seconds": inner["seconds"], "process_seconds": wall}
        lines = (run_dir / RESULTS_FILE).read_text(encoding="utf-8").splitlines()
        rows[name] = [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]
        if name == "serial":
            per_config = read_results(run_dir).drop_duplicates("submodel_id")["seconds"]
    started = time.perf_counter()
    load_model(checkpoint)
    load_seconds = time.perf_counter() - started
    return {"checkpoint": checkpoint, "configs": len(configs), "limit": limit, "runs": measured,
            "rows_identical": {name: rows[name] == rows["serial"] for name in rows if name != "serial"},
            "over_serial": {name: numbers["sweep_seconds"] / measured["serial"]["sweep_seconds"]
                            for name, numbers in measured.items()},
            "model_load_seconds": load_seconds, "config_seconds_median": float(per_config.median()),
            "config_seconds_total": float(per_config.sum())}


def bench_switch(checkpoint: Path, config: Path, work_dir: Path, dtype: str = "bfloat16", builds: int = 5) -> dict:
    """Switching to one submodel: elastic build from the loaded full model against slicing the
    config to disk (text-only) and loading it. Each side starts with the input's pages dropped
    from the cache; the two submodels' logits on one input are compared."""
    import torch

    _check_inputs(checkpoint, [config])
    work_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for mode in ("elastic", "materialize"):
        drop_page_cache(checkpoint)
        numbers, wall, rss = run_measured("matlab.bench.run_switch", [mode, str(checkpoint), str(config), str(work_dir),
                                                                       "--dtype", dtype, "--builds", str(builds)])
        results[mode] = {**numbers, "process_seconds": wall, "peak_rss_bytes": rss}
    logits = [torch.load(work_dir / f"logits-{mode}.pt") for mode in ("elastic", "materialize")]
    shutil.rmtree(work_dir / "sliced", ignore_errors=True)
    # A switch ends when the submodel has answered its first forward pass: loading is lazy
    # (memory-mapped), so the slice's first pass pays for reading it.
    elastic_build = statistics.median(results["elastic"]["build_seconds_each"])
    elastic_switch = elastic_build + results["elastic"]["first_forward_seconds"]
    disk = results["materialize"]
    disk_switch = disk["slice_seconds"] + disk["load_slice_seconds"] + disk["first_forward_seconds"]
    return {"checkpoint": str(checkpoint), "config": str(config), "dtype": dtype, "modes": results,
            "elastic_build_seconds": elastic_build, "elastic_switch_seconds": elastic_switch,
            "disk_switch_seconds": disk_switch,
            "disk_over_elastic": disk_switch / elastic_switch,
            "max_logit_difference": float((logits[0] - logits[1]).abs().max())}
