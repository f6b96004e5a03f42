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

from matlab.bench.slice_bench import drop_page_cache, run_measured

_SWEEP_RUNNER = """
import json, sys, time
from pathlib import Path
import lm_eval.evaluator  # imported before the clock starts, by both modes alike
from matlab.harness.suite import load_suite
from matlab.harness.sweep import SweepSettings, run_sweep
checkpoint, suite, run_dir, materialize, limit = sys.argv[1:6]
configs = [Path(p) for p in json.loads(sys.argv[6])]
settings = SweepSettings(load_suite(Path(suite)), limit=int(limit) if limit else None, materialize=materialize == "1")
started = time.perf_counter()
run_sweep(checkpoint, configs, Path(run_dir), settings)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

_SWITCH_RUNNER = """
import json, sys, time
from pathlib import Path
import torch
from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.slice_config import load_slice_config
from matlab.slicer import slice_checkpoint
mode, checkpoint, config_path, work, dtype, builds = sys.argv[1:7]
config = load_slice_config(config_path)
numbers = {}

def first_forward(model, key="first_forward_seconds", save=True):
    ids = torch.tensor([[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000]]) % model.config.vocab_size
    started = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    numbers[key] = time.perf_counter() - started
    if save:
        torch.save(logits, Path(work) / f"logits-{mode}.pt")

if mode == "elastic":
    started = time.perf_counter()
    loaded = load_model(checkpoint, dtype=dtype)
    numbers["load_full_seconds"] = time.perf_counter() - started
    # Loading maps the files lazily; a forward pass of the full model pages its weights in, as
    # the first config of a sweep would. Switching is measured from that warm state.
    first_forward(loaded.model, "full_model_warmup_seconds", save=False)
    timings = []
    for _ in range(int(builds)):
        started = time.perf_counter()
        submodel = select_submodel(loaded, config, config_path)
        timings.append(time.perf_counter() - started)
    numbers["build_seconds_each"] = timings
    first_forward(submodel.model)
else:
    target = Path(work) / "sliced"
    started = time.perf_counter()
    slice_checkpoint(Path(checkpoint), config, target, config_source=config_path, text_only=True, force=True)
    numbers["slice_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    loaded = load_model(target, dtype=dtype)
    numbers["load_slice_seconds"] = time.perf_counter() - started
    first_forward(loaded.model)
print(json.dumps(numbers))
"""


def _check_inputs(checkpoint: str | Path, configs: list[Path]) -> None:
    """Validate the checkpoint and every config here, so bad input stops with the library's own
    message (naming the field or layer) before any process starts or anything is written."""
    from matlab.architecture import facts_from_checkpoint
    from matlab.plan import SlicePlan
    from matlab.resolve import resolve_checkpoint
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
        inner, wall, rss = run_measured(_SWEEP_RUNNER, [checkpoint, str(suite), str(run_dir), "1" if mode == "materialize"
                                                else "0", str(limit or ""), json.dumps([str(p) for p in configs])])
        measured[mode] = {"sweep_seconds": inner["seconds"], "process_seconds": wall, "peak_rss_bytes": rss}
    elastic, materialized = _scores(work_dir / "elastic"), _scores(work_dir / "materialize")
    if set(elastic) != set(materialized):
        raise AssertionError("the two sweeps produced different (config, task, metric) rows")
    differences = [abs(elastic[key] - materialized[key]) for key in elastic]
    return {"checkpoint": checkpoint, "configs": len(configs), "suite": str(suite), "limit": limit,
            "modes": measured, "scores_compared": len(differences),
            "scores_identical": sum(d == 0 for d in differences), "max_score_difference": max(differences),
            "materialize_over_elastic_seconds": measured["materialize"]["sweep_seconds"]
            / measured["elastic"]["sweep_seconds"]}


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
        numbers, wall, rss = run_measured(_SWITCH_RUNNER, [mode, str(checkpoint), str(config), str(work_dir), dtype,
                                                   str(builds)])
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
            "elastic_build_seconds": elastic_build, "elastic_switch_seconds": elastic_switch, "disk_switch_seconds": disk_switch,
            "disk_over_elastic": disk_switch / elastic_switch,
            "max_logit_difference": float((logits[0] - logits[1]).abs().max())}
