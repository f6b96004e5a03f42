"""Sweeps: evaluate many slice configs of one base model on a suite, resumably.

The full model is loaded once and every config runs as an elastic submodel; with
`materialize` each config is instead sliced to disk and loaded (the slow path, kept to
cross-check the elastic one). When every config is scored, their throughput is measured
round-robin (`matlab.core.latency`) on the elastic submodels, so that a busy machine cannot
reorder them, and written into their rows.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from matlab import __version__
from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.core.latency import Latency, round_robin_latency
from matlab.core.loading import LoadedModel, load_model
from matlab.core.submodel import Submodel, select_submodel
from matlab.distributed.pool import PoolSettings, WorkerPool
from matlab.errors import InputError, MatformerError, MatformerWarning
from matlab.harness.evaluate import evaluate_submodel
from matlab.harness.hub_data import require_datasets
from matlab.harness.lm import DEFAULT_BOS_POLICY
from matlab.harness.results import (
    CONFIGS_DIR,
    RESULTS_FILE,
    RUN_FILE,
    SERIAL_LATENCY,
    check_run_files,
    finished_keys,
    rebuild_results,
    record_config,
    recorded_configs,
    recorded_rows,
)
from matlab.harness.suite import Suite
from matlab.io.lock import run_directory_lock
from matlab.io.rundir import checkpoint_identity, json_kind, read_json_file, write_atomic
from matlab.io.staging import check_apart
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes import expected_in, runs_in
from matlab.slice_config import SliceConfig, load_slice_config
from matlab.slicing.adapters import adapter_identity
from matlab.slicing.slicer import ADAPTER_FOLDER, slice_checkpoint


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
    bos_policy: str = DEFAULT_BOS_POLICY
    latency_prompt_tokens: int = 64
    latency_decode_tokens: int = 16
    latency_rounds: int = 5
    adapter: Path | None = None  # a PEFT LoRA adapter merged into the full model before its slices are taken


# Version of the run directory's layout: results keyed by submodel identity since 2; latency
# measured round-robin after the scores, BOS policy recorded, since 3.
RESULTS_FORMAT = 3
LATENCY_FIELDS = ("prefill_tokens_per_s", "prefill_tokens_per_s_min", "prefill_tokens_per_s_max",
                  "decode_tokens_per_s", "decode_tokens_per_s_min", "decode_tokens_per_s_max", "latency_rounds",
                  "latency_threads", "latency_device", "latency_measured_on")


def _run_identity(directory: Path, settings: SweepSettings) -> dict:
    identity = {"results_format": RESULTS_FORMAT, "checkpoint": checkpoint_identity(directory),
                "suite": settings.suite.model_dump(mode="json"),
                "limit": settings.limit, "materialize": settings.materialize, "device": settings.device,
                "dtype": settings.dtype, "seed": settings.seed, "bos_policy": settings.bos_policy}
    # Only with an adapter: a run without one, of any version, keeps its identity.
    return {**identity, "adapter": adapter_identity(settings.adapter, directory)} if settings.adapter else identity


def _load(checkpoint: str | Path, settings: SweepSettings) -> LoadedModel:
    return load_model(checkpoint, device=settings.device, dtype=settings.dtype, adapter=settings.adapter)


def _check_run_dir(run_dir: Path, identity: dict) -> None:
    """Refuse a run directory that holds another sweep, or whose files are damaged (writes nothing)."""
    check_run_files(run_dir)
    run_file = run_dir / RUN_FILE
    # run.json says which sweep the results belong to: without it they cannot be resumed.
    fix = "it records which sweep the directory holds: restore it, or choose another --out"
    if run_file.is_file():
        record = read_json_file(run_file, fix)
        previous = record.get("identity") if isinstance(record, dict) else None
        if not isinstance(previous, dict):
            what = "has no sweep identity" if isinstance(record, dict) else f"holds {json_kind(record)}, not an object"
            raise InputError(f"{run_file}: {what}; {fix}")
        if previous != identity:
            changed = sorted(key for key in set(identity) | set(previous) if previous.get(key) != identity.get(key))
            raise SweepError(f"{run_dir} holds a sweep with different {', '.join(changed)}; resume it with the "
                             "same settings, or choose another --out")
    elif finished_keys(run_dir):  # the sweep writes run.json before any result
        raise InputError(f"{run_file}: missing, though {run_dir / CONFIGS_DIR} holds results; {fix}")
    recorded_configs(run_dir)  # every recorded config readable, before any work


def _start_run_dir(run_dir: Path, identity: dict) -> None:
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_file, json.dumps({"identity": identity, "tool_version": __version__,
                                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")


def _rows(submodel: Submodel, path: Path, config: SliceConfig, plan: SlicePlan, settings: SweepSettings,
          accounting, directory: Path, seconds_start: float) -> list[dict]:
    device = submodel.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scores = evaluate_submodel(submodel, settings.suite, limit=settings.limit, seed=settings.seed,
                               bos_policy=settings.bos_policy)
    # Peak memory per config is measured on CUDA, where the allocator's peak can be reset
    # between configs. On the CPU the process's peak RSS covers every config before this one
    # (and the full model's pages), so no per-config figure is recorded there.
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    reference = config.reference
    common = {
        "config": config.name, "config_file": str(path), "submodel_id": plan.submodel_id, "runs_in": runs_in(plan),
        "expected_in": expected_in(plan),
        "layers_skipped": list(config.layers_skipped), "ffn_widths": list(submodel.plan.ffn_widths),
        "kept_layers": len(submodel.plan.kept_layers),
        "effective_params": accounting.effective_params, "ple_params": accounting.ple_params,
        # With the config's weight_formats: the bytes of its GGUF file, scores at those formats.
        "text_params": accounting.text_params, "weight_bytes": submodel.weight_bytes,
        "weight_formats": submodel.weight_formats,
        "ple_bytes": submodel.ple_bytes, **dict.fromkeys(LATENCY_FIELDS), "peak_memory_bytes": peak,
        "stated_effective_params_b": reference.effective_params_b if reference else None,
        "stated_mmlu": reference.mmlu_pt_accuracy if reference else None,
        "mode": "materialized" if settings.materialize else "elastic", "device": str(device),
        "dtype": str(submodel.model.dtype).removeprefix("torch."), "seed": settings.seed, "limit": settings.limit,
        "bos_policy": settings.bos_policy, "tool_version": __version__, "checkpoint": str(directory),
        "suite": settings.suite.name,
    }
    elapsed = round(time.perf_counter() - seconds_start, 2)
    return [{**common, **score.as_dict(), "seconds": elapsed} for score in scores]


def evaluate_config(loaded: LoadedModel, path: Path, config: SliceConfig, plan: SlicePlan, settings: SweepSettings,
                    accounting, directory: Path) -> list[dict]:
    """The result rows of one config, evaluated as an elastic submodel of `loaded` (the serial
    sweep and every distributed worker run this)."""
    started = time.perf_counter()
    submodel = select_submodel(loaded, config, str(path))
    return _rows(submodel, path, config, plan, settings, accounting, directory, started)


def config_latencies(loaded: LoadedModel, configs: dict[str, SliceConfig], settings: SweepSettings,
                     on_round=None) -> dict[str, Latency]:
    """Throughput of every config, round-robin on elastic submodels of `loaded`."""
    models = {key: select_submodel(loaded, config).model for key, config in configs.items()}
    return round_robin_latency(models, settings.latency_prompt_tokens, settings.latency_decode_tokens,
                               settings.latency_rounds, settings.seed, on_round=on_round)


def evaluate_on_worker(state: dict, payload: dict) -> list[dict]:
    """A Ray worker's task (`matlab.distributed`): one config's rows."""
    return evaluate_config(state["loaded"], **payload)


def latencies_on_worker(state: dict, payload: dict) -> dict:
    """A Ray worker's task: every config's throughput there, and the host it was measured on."""
    return {"latencies": config_latencies(state["loaded"], payload["configs"], payload["settings"]),
            "host": socket.gethostname()}


def ray_latency_place(host: str, workers: int) -> str:
    """`latency_measured_on` of a distributed sweep: one worker measures while the others sit
    idle, never side by side on shared cores."""
    return f"one Ray worker on {host}" + (", the other workers idle" if workers > 1 else "")


def _write_latencies(run_dir: Path, measured: dict[str, Latency], measured_on: str) -> None:
    """Each config's rows with its throughput, rewritten atomically one by one (a kill leaves
    the others to measure again)."""
    for key, latency in measured.items():
        values = latency.as_dict()
        fields = {name: values[name] for name in LATENCY_FIELDS if name in values}
        fields.update(latency_rounds=latency.rounds, latency_threads=latency.threads, latency_device=latency.device,
                      latency_measured_on=measured_on)
        record_config(run_dir, key, [{**row, **fields} for row in recorded_rows(run_dir, key)])


def run_sweep(checkpoint: str | Path, config_paths: list[Path], run_dir: Path, settings: SweepSettings,
              progress: Progress = NO_PROGRESS, pool: PoolSettings | None = None) -> list[str]:
    """Evaluate every config not yet recorded in `run_dir`; returns the keys evaluated now.
    `progress` counts configs and names the one being evaluated. With `pool`, the configs are
    spread over Ray workers (`matlab.distributed`); the rows are the same."""
    from matlab.io.resolve import resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    check_apart(run_dir, [directory, *config_paths], replaces=False)  # a run is added to, never replaced
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
    if pool is not None and settings.materialize:
        raise SweepError("--materialize slices every config to one machine's disk; run it without --workers")
    require_datasets(settings.suite)  # offline and uncached: one line now, not a failure mid-sweep
    identity = _run_identity(directory, settings)
    # One sweep at a time in a run directory: a second one would evaluate every config again.
    with run_directory_lock(run_dir) as lock:
        if lock.took_over:
            warnings.warn(lock.took_over, MatformerWarning, stacklevel=2)
        return _sweep_locked(checkpoint, directory, facts, inventory, configs, keys, plans, run_dir, identity,
                             settings, progress, pool)


def _sweep_locked(checkpoint: str | Path, directory: Path, facts, inventory, configs: list[tuple[Path, SliceConfig]],
                  keys: list[str], plans: list[SlicePlan], run_dir: Path, identity: dict, settings: SweepSettings,
                  progress: Progress, pool: PoolSettings | None) -> list[str]:
    _check_run_dir(run_dir, identity)
    done = finished_keys(run_dir)
    todo = [(path, config, key, plan) for (path, config), key, plan in zip(configs, keys, plans) if key not in done]
    by_key = {key: config for (_, config), key in zip(configs, keys)}
    needs_latency = bool(todo) or any(recorded_rows(run_dir, key)[0].get("decode_tokens_per_s") is None
                                      for key in keys)
    if not todo and not (run_dir / RESULTS_FILE).exists():
        rebuild_results(run_dir)  # deleted (it is derived from configs/): written again
    evaluated: list[str] = []

    def record(key: str, rows: list[dict]) -> None:
        record_config(run_dir, key, rows)
        evaluated.append(key)
        progress.advance()

    if pool is not None and needs_latency:
        # The cluster is joined (or Ray started) before anything is written: an unreachable
        # cluster leaves no run directory behind.
        load = functools.partial(load_model, str(checkpoint), device=settings.device, dtype=settings.dtype,
                                 adapter=settings.adapter)
        with WorkerPool(load, settings.device, pool) as workers:
            _start_run_dir(run_dir, identity)
            progress.start(len(configs), completed=len(configs) - len(todo), description="sweep")
            progress.describe(f"evaluating on {pool.workers} workers")
            payloads = [{"path": path, "config": config, "plan": plan, "settings": settings, "directory": directory,
                         "accounting": count_parameters(inventory, facts, plan, text_only=True)}
                        for path, config, _, plan in todo]
            workers.map(evaluate_on_worker, payloads, on_result=lambda index, rows: record(todo[index][2], rows))
            # Throughput on one worker while the others are idle: comparable with a serial run,
            # and the rows say where it was taken.
            progress.describe("latency, round-robin on one worker")
            measured = workers.call(latencies_on_worker, {"configs": by_key, "settings": settings})
            _write_latencies(run_dir, measured["latencies"], ray_latency_place(measured["host"], pool.workers))
        return evaluated
    _start_run_dir(run_dir, identity)
    progress.start(len(configs), completed=len(configs) - len(todo), description="sweep")
    loaded: LoadedModel | None = None
    for path, config, key, plan in todo:
        progress.describe(f"evaluating {config.name}")
        accounting = count_parameters(inventory, facts, plan, text_only=True)
        if settings.materialize:
            started = time.perf_counter()
            target = run_dir / "materialized" / key
            sliced = slice_checkpoint(directory, config, target, config_source=str(path), text_only=True, force=True,
                                      adapter=settings.adapter)
            adapter = sliced.out / ADAPTER_FOLDER if settings.adapter else None
            submodel = select_submodel(load_model(target, device=settings.device, dtype=settings.dtype,
                                                  adapter=adapter), None)
            rows = _rows(submodel, path, config, plan, settings, accounting, directory, started)
            shutil.rmtree(target, ignore_errors=True)
        else:
            loaded = loaded or _load(directory, settings)
            rows = evaluate_config(loaded, path, config, plan, settings, accounting, directory)
        record(key, rows)
    if needs_latency:
        loaded = loaded or _load(directory, settings)
        progress.start(settings.latency_rounds, description="latency, round-robin")
        _write_latencies(run_dir, config_latencies(loaded, by_key, settings, on_round=lambda _: progress.advance()),
                         SERIAL_LATENCY)
    return evaluated
