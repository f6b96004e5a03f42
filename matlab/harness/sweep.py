"""Sweeps: evaluate many slice configs of one base model on a suite, resumably.

The full model is loaded once and every config runs as an elastic submodel; with
`materialize` each config is instead sliced to disk and loaded (the slow path, kept to
cross-check the elastic one).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from matlab import __version__
from matlab.accounting import count_parameters
from matlab.architecture import facts_from_checkpoint
from matlab.core.latency import measure_latency
from matlab.core.loading import LoadedModel, load_model
from matlab.core.submodel import Submodel, select_submodel
from matlab.errors import MatformerError
from matlab.harness.evaluate import evaluate_submodel
from matlab.harness.results import RUN_FILE, finished_keys, record_config, write_atomic
from matlab.harness.suite import Suite
from matlab.inventory import inventory_from_checkpoint
from matlab.model_card import checkpoint_identity
from matlab.plan import SlicePlan
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes import runs_in
from matlab.slice_config import SliceConfig, load_slice_config
from matlab.slicer import slice_checkpoint


class SweepError(MatformerError):
    """The run directory holds a different sweep, or a config cannot be swept."""


@dataclass(frozen=True)
class SweepSettings:
    suite: Suite
    limit: int | None = None
    materialize: bool = False
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 1234
    latency_prompt_tokens: int = 64
    latency_decode_tokens: int = 16
    latency_runs: int = 3


# Version of the run directory's layout: results are keyed by submodel identity since 2.
RESULTS_FORMAT = 2


def _run_identity(directory: Path, settings: SweepSettings) -> dict:
    return {"results_format": RESULTS_FORMAT, "checkpoint": checkpoint_identity(directory),
            "suite": settings.suite.model_dump(mode="json"),
            "limit": settings.limit, "materialize": settings.materialize, "device": settings.device,
            "dtype": settings.dtype, "seed": settings.seed}


def _check_run_dir(run_dir: Path, identity: dict) -> None:
    run_file = run_dir / RUN_FILE
    if run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))["identity"]
        if previous != identity:
            changed = sorted(key for key in identity if previous.get(key) != identity[key])
            raise SweepError(f"{run_dir} holds a sweep with different {', '.join(changed)}; resume it with the "
                             "same settings, or choose another --out")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_file, json.dumps({"identity": identity, "tool_version": __version__,
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rows(submodel: Submodel, path: Path, config: SliceConfig, plan: SlicePlan, settings: SweepSettings,
          accounting, directory: Path, seconds_start: float) -> list[dict]:
    latency = measure_latency(submodel.model, settings.latency_prompt_tokens, settings.latency_decode_tokens,
                              settings.latency_runs, seed=settings.seed)
    scores = evaluate_submodel(submodel, settings.suite, limit=settings.limit, seed=settings.seed)
    reference = config.reference
    common = {
        "config": config.name, "config_file": str(path), "submodel_id": plan.submodel_id, "runs_in": runs_in(plan),
        "layers_skipped": list(config.layers_skipped), "ffn_widths": list(submodel.plan.ffn_widths),
        "kept_layers": len(submodel.plan.kept_layers),
        "effective_params": accounting.effective_params, "ple_params": accounting.ple_params,
        "text_params": accounting.text_params, "weight_bytes": submodel.weight_bytes,
        "ple_bytes": submodel.ple_bytes, "prefill_tokens_per_s": latency.prefill_tokens_per_s,
        "decode_tokens_per_s": latency.decode_tokens_per_s,
        "peak_memory_bytes": _peak_memory_bytes(submodel.device),
        "stated_effective_params_b": reference.effective_params_b if reference else None,
        "stated_mmlu": reference.mmlu_pt_accuracy if reference else None,
        "mode": "materialized" if settings.materialize else "elastic", "device": latency.device,
        "dtype": latency.dtype, "seed": settings.seed, "limit": settings.limit, "tool_version": __version__,
        "checkpoint": str(directory), "suite": settings.suite.name,
    }
    elapsed = round(time.perf_counter() - seconds_start, 2)
    return [{**common, **score.as_dict(), "seconds": elapsed} for score in scores]


def run_sweep(checkpoint: str | Path, config_paths: list[Path], run_dir: Path, settings: SweepSettings,
              progress: Progress = NO_PROGRESS) -> list[str]:
    """Evaluate every config not yet recorded in `run_dir`; returns the keys evaluated now.
    `progress` counts configs and names the one being evaluated."""
    from matlab.resolve import resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    facts = facts_from_checkpoint(directory)
    inventory = inventory_from_checkpoint(directory)
    configs = [(path, load_slice_config(path)) for path in config_paths]
    plans = [SlicePlan.build(config, facts, str(path)) for path, config in configs]  # validate all first
    keys = [plan.submodel_id for plan in plans]  # the submodel, however its config spells it
    first_path = {}
    for (path, _), key in zip(configs, keys):
        if key in first_path:
            raise SweepError(f"{first_path[key]} and {path} describe the same submodel (kept layers and widths); "
                             "list one of them")
        first_path[key] = path
    _check_run_dir(run_dir, _run_identity(directory, settings))
    done = finished_keys(run_dir)
    progress.start(len(configs), completed=len(done & set(keys)), description="sweep")
    loaded: LoadedModel | None = None
    evaluated = []
    for (path, config), key, plan in zip(configs, keys, plans):
        if key in done:
            continue
        progress.describe(f"evaluating {config.name}")
        started = time.perf_counter()
        accounting = count_parameters(inventory, facts, plan, text_only=True)
        if settings.materialize:
            target = run_dir / "materialized" / key
            slice_checkpoint(directory, config, target, config_source=str(path), text_only=True, force=True)
            submodel = select_submodel(load_model(target, device=settings.device, dtype=settings.dtype), None)
            rows = _rows(submodel, path, config, plan, settings, accounting, directory, started)
            shutil.rmtree(target, ignore_errors=True)
        else:
            loaded = loaded or load_model(directory, device=settings.device, dtype=settings.dtype)
            submodel = select_submodel(loaded, config, str(path))
            rows = _rows(submodel, path, config, plan, settings, accounting, directory, started)
        record_config(run_dir, key, rows)
        evaluated.append(key)
        progress.advance()
    return evaluated
