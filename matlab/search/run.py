"""`matformer search`: the whole search, from arguments to the run directory."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matlab import __version__
from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import StoredTensor, inventory_from_checkpoint
from matlab.core.calibration import (
    Calibration,
    CalibrationText,
    make_calibration,
    read_calibration,
    reference_distributions,
    texts_digest,
    window_count,
    window_subset,
)
from matlab.core.formatted import formatted_weights
from matlab.core.loading import load_model, load_shapes, load_tokenizer
from matlab.core.memory import available_memory
from matlab.core.submodel import format_cache
from matlab.distributed.pool import PoolSettings, WorkerPool
from matlab.errors import InputError
from matlab.formats.cache import EXACT_FORMATS
from matlab.formats.types import FLOAT_FORMATS, check_preset
from matlab.io.lock import run_directory_lock
from matlab.io.resolve import EMBEDDED, resolve_checkpoint
from matlab.io.rundir import changed_keys, checkpoint_identity
from matlab.io.staging import check_apart
from matlab.plan import SlicePlan
from matlab.plan.tensor_formats import tensor_formats
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes import check_runtime
from matlab.search.algorithm import DEFAULT_STRATEGY, STRATEGIES, Evaluator, run_algorithm
from matlab.search.frontier import journal_record, write_frontier
from matlab.search.journal import CONFIRM_DIR, FRONTIER_DIR, Journal, SearchError, check_directory, recorded_identity
from matlab.search.objective import OBJECTIVES, measure_candidate
from matlab.search.space import Budget, Candidate, SearchSpace
from matlab.search.summary import SearchSummary
from matlab.slice_config import SliceConfig, load_slice_config
from matlab.slice_config.weight_formats import WeightFormats
from matlab.slicing.adapters import adapter_identity
from matlab.util.sizes import short_count


@dataclass(frozen=True)
class SearchSettings:
    checkpoint: str
    out: Path
    max_params: int | None = None
    max_bytes: int | None = None
    runtime: str | None = None
    objective: str = "kl"
    calibration: Path | None = None
    widths: tuple[int, ...] | None = None
    max_evals: int = 200
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    calibration_tokens: int = 2048
    window: int = 256
    top_k: int = 256
    strategy: str = DEFAULT_STRATEGY
    confirm_suite: Path | None = None
    confirm_limit: int | None = None
    pool: PoolSettings | None = None  # spread the evaluations over Ray workers
    formats: tuple[str, ...] | None = None  # weight formats searched with widths and skips (`search --formats`)
    format_genes: str = "group"  # a format per layer and tensor group ("group") or per layer ("layer")
    adapter: Path | None = None  # a PEFT LoRA adapter merged into the full model: its slices are searched
    # llama.cpp file types (q4_k_m) evaluated on the full model and each of `baseline_configs`
    # before the search: the files a user would otherwise download, on the same axes as the frontier.
    baselines: tuple[str, ...] = ()
    baseline_configs: tuple[Path, ...] = ()
    skips: bool = True  # False: widths and formats only, every layer kept


_NOT_IDENTITY = ("out", "max_evals", "confirm_suite", "confirm_limit", "pool", "baselines", "baseline_configs")


@dataclass
class SearchResult:
    directory: Path
    summary: SearchSummary
    warnings: list[str] = field(default_factory=list)
    confirm: Path | None = None


def _check_arguments(settings: SearchSettings) -> None:
    if settings.max_params is None and settings.max_bytes is None:
        raise InputError("give a budget: --max-params (effective parameters) and/or --max-bytes (weight bytes)")
    for option, value in (("--max-params", settings.max_params), ("--max-bytes", settings.max_bytes)):
        if value is not None and value <= 0:
            raise InputError(f"{option}: the budget must be positive")
    if settings.objective not in OBJECTIVES:
        raise InputError(f"--objective {settings.objective}: choose one of {', '.join(OBJECTIVES)}")
    if settings.runtime:
        check_runtime(settings.runtime)
    if settings.max_evals < 1:
        raise InputError("--max-evals: at least 1")
    if settings.strategy not in STRATEGIES:
        raise InputError(f"--strategy {settings.strategy}: choose one of {', '.join(STRATEGIES)}")
    if settings.formats and settings.max_bytes is None:
        raise InputError("--formats: give --max-bytes; weight formats change the bytes of the file, not the "
                         "effective parameters, so only a byte budget can trade them against widths and skips")
    if (settings.baselines or settings.baseline_configs) and not settings.formats:
        raise InputError("--baseline: give --formats too; a preset's cost is the bytes of its GGUF file, the axis of a "
                         "formats search")
    if settings.baseline_configs and not settings.baselines:
        raise InputError("--baseline-config: name the preset it is measured at with --baseline (q4_k_m)")
    for preset in settings.baselines:
        try:
            check_preset(preset)  # the settings keep the spelling given: WeightFormats lowers it again
        except ValueError as error:
            raise InputError(f"--baseline {preset}: {error}") from None


def calibration_texts(settings: SearchSettings) -> tuple[Iterable[CalibrationText], str]:
    if settings.calibration is not None:
        return read_calibration(settings.calibration), str(settings.calibration)
    if settings.checkpoint in EMBEDDED:
        from matlab.nano.world import CALIBRATION_SEED, calibration_text, make_world

        return calibration_text(make_world()), f"nano-world calibration text (seed {CALIBRATION_SEED})"
    raise InputError(f"--calibration: {settings.checkpoint} is not the embedded nano model; give a text or JSONL "
                     "file of text like the model's use (a few thousand tokens)")


def run_search(settings: SearchSettings, progress: Progress = NO_PROGRESS) -> SearchResult:
    """Search, write the run directory, and (with `confirm_suite`) confirm the frontier with a sweep."""
    _check_arguments(settings)
    directory = resolve_checkpoint(settings.checkpoint)
    check_apart(settings.out, [directory, settings.calibration, settings.confirm_suite], replaces=False)
    facts = facts_from_checkpoint(directory)
    suite = None
    if settings.confirm_suite is not None:
        from matlab.harness.hub_data import require_datasets
        from matlab.harness.suite import load_suite

        suite = load_suite(settings.confirm_suite)
        require_datasets(suite)
    if settings.out.exists() and not settings.out.is_dir():
        raise SearchError(f"--out {settings.out}: exists and is not a directory; choose another --out")
    # One search at a time in a directory: a second one would evaluate every candidate again.
    with run_directory_lock(settings.out) as lock:
        result = _search_locked(settings, directory, facts, progress)
        result.warnings[:0] = [lock.took_over] if lock.took_over else []
        if suite is not None:  # after the search's workers are gone: the sweep starts its own
            from matlab.harness.sweep import SweepSettings, run_sweep

            frontier = sorted((settings.out / FRONTIER_DIR).glob("*.yaml"))
            run_sweep(settings.checkpoint, frontier, settings.out / CONFIRM_DIR,
                      SweepSettings(suite, limit=settings.confirm_limit, device=settings.device, dtype=settings.dtype,
                                    adapter=settings.adapter),
                      progress=progress, pool=settings.pool)
            result.confirm = settings.out / CONFIRM_DIR
    return result


def _search_locked(settings: SearchSettings, directory: Path, facts, progress: Progress) -> SearchResult:
    texts, calibration_source = calibration_texts(settings)
    # The calibration is read (as far as it is used) before the model is loaded: its digest is
    # part of the search's identity, checked before anything is written.
    calibration = make_calibration(load_tokenizer(directory), texts, calibration_source, settings.window,
                                   settings.calibration_tokens)
    budget = Budget(settings.max_params, settings.max_bytes)
    arguments = {key: (str(value) if isinstance(value, Path) else
                       [str(item) for item in value] if key == "baseline_configs" else value)
                 for key, value in asdict(settings).items()}
    # What makes two searches the same search: everything but where it writes, how far it goes
    # and what confirms it afterwards; the checkpoint by content, the calibration by the text it used.
    # (`format_genes` only with formats: a search without them, of any version, is the same search.)
    not_identity = _NOT_IDENTITY + (() if settings.formats else ("format_genes",)) + ("adapter",) + \
        (("skips",) if settings.skips else ())
    identity = {**{key: value for key, value in arguments.items() if key not in not_identity},
                "checkpoint": checkpoint_identity(directory), "calibration": calibration_source,
                "calibration_sha256": calibration.texts_sha256,
                **({"adapter": adapter_identity(settings.adapter, directory)} if settings.adapter else {})}
    identity = _resumed_identity(settings, identity)
    check_directory(settings.out, identity)
    pool = _start_pool(settings)
    try:
        return _search(settings, directory, facts, calibration, identity, arguments, budget, pool, progress)
    finally:
        if pool is not None:
            pool.close()


def _resumed_identity(settings: SearchSettings, identity: dict[str, Any]) -> dict[str, Any]:
    """`identity`, or the one recorded in `settings.out` by an earlier version for this same
    search: its calibration_sha256 covered the whole calibration source, not the text used.
    Such a search (alike in all else, its source unchanged) is resumed under its record."""
    previous = recorded_identity(settings.out)
    if previous is None or changed_keys(previous, identity) != ["calibration_sha256"]:
        return identity
    try:
        whole = texts_digest(calibration_texts(settings)[0])  # read through once, a piece at a time
    except InputError:  # unreadable past what the search uses: not the source that search read
        return identity
    return {**identity, "calibration_sha256": whole} if whole == previous["calibration_sha256"] else identity


def _start_pool(settings: SearchSettings):
    if settings.pool is None:
        return None
    load = functools.partial(load_model, settings.checkpoint, device=settings.device, dtype=settings.dtype,
                             adapter=settings.adapter)
    return WorkerPool(load, settings.device, settings.pool)


# The search's tasks on a Ray worker (`matlab.distributed`), whose state holds the loaded model.
def reference_on_worker(state: dict, payload: dict):
    return reference_distributions(state["loaded"].model, payload["calibration"], payload["top_k"])


def setup_on_worker(state: dict, payload: dict) -> None:
    state["search"] = payload


def releasable(loaded, formats: tuple[str, ...]) -> list[str]:
    """The weights a search over `formats` never reads at the run dtype: every 2-D weight that
    llama.cpp quantizes (not the tables read by rows, not those it keeps at the source type),
    unless a searched format is the run dtype's own."""
    if any(fmt in EXACT_FORMATS.get(loaded.dtype, ()) for fmt in formats):
        return []
    family, prefix = loaded.facts.family, loaded.facts.text_prefix
    names = []
    for name, parameter in loaded.model.named_parameters():
        relative = name.removeprefix(prefix)
        match = family.layer_tensor.fullmatch(relative)
        suffix = match.group(2) if match else relative
        if parameter.ndim == 2 and relative != family.ple_table and suffix not in family.gguf_float32_tensors \
                and family.gguf_category(suffix) != "kept":
            names.append(name)
    return names


def candidate_on_worker(state: dict, config) -> tuple[float, float, float]:
    loaded = state["loaded"]
    plan = SlicePlan.build(config, loaded.facts, config.name)
    weights = formatted_weights(format_cache(loaded), plan, loaded.dtype, loaded.device) \
        if config.weight_formats else None
    return measure_candidate(loaded.model, plan, state["search"]["calibration"], state["search"]["reference"], weights)


def screening_on_worker(state: dict, payload: tuple) -> tuple[float, float, float]:
    """A candidate on some calibration windows only (EvoPress's early selection stages)."""
    config, windows = payload
    loaded = state["loaded"]
    plan = SlicePlan.build(config, loaded.facts, config.name)
    weights = formatted_weights(format_cache(loaded), plan, loaded.dtype, loaded.device) \
        if config.weight_formats else None
    calibration, reference = window_subset(state["search"]["calibration"], state["search"]["reference"], windows)
    return measure_candidate(loaded.model, plan, calibration, reference, weights)


def _search(settings: SearchSettings, directory: Path, facts, calibration: Calibration, identity: dict,
            arguments: dict, budget: Budget, pool, progress: Progress) -> SearchResult:
    # With workers, this process needs the model's shapes only (costs); the workers run it.
    loaded = load_shapes(directory, settings.dtype) if pool else \
        load_model(directory, device=settings.device, dtype=settings.dtype, adapter=settings.adapter,
                   mapped=not settings.formats)  # the formats search frees the weights it packs
    space = SearchSpace(facts, inventory_from_checkpoint(directory), loaded, settings.widths, settings.runtime,
                        settings.formats, settings.format_genes, settings.skips)
    if settings.runtime:
        space.check_runtime_can_load_base()
    smallest = space.smallest()
    if not smallest.valid or budget.excess(smallest) > 0:
        at = f"GGUF bytes at {'/'.join(space.formats)}" if space.formats else f"weight bytes at {settings.dtype}"
        raise InputError(f"the budget is below the smallest valid submodel ({short_count(smallest.effective_params)} "
                         f"effective parameters, {smallest.weight_bytes:,} {at}); raise --max-params/--max-bytes")
    journal = Journal(settings.out, identity, arguments)
    started = time.perf_counter()
    reference = None
    if settings.objective == "kl":
        reference = pool.call(reference_on_worker, {"calibration": calibration, "top_k": settings.top_k}) if pool else \
            reference_distributions(loaded.model, calibration, settings.top_k)
    if pool:
        pool.setup(setup_on_worker, {"calibration": calibration, "reference": reference})
    reference_seconds = time.perf_counter() - started
    # Every weight packed once per format, before the first candidate; the full model's own
    # values are then needed no more where every candidate holds that weight in a format.
    baselines = baseline_candidates(space, settings)
    quantize_seconds = {}
    if space.formats and not pool:
        # The baselines' own types (q6_k embeddings, promoted attn_v/ffn_down) are packed too:
        # the originals are released after packing.
        extra = {tensor.format for _, candidate in baselines for tensor in stored_formats(loaded, space, candidate)}
        packed = tuple(dict.fromkeys([*space.formats, *sorted(extra - set(space.formats) - set(FLOAT_FORMATS))]))
        quantize_seconds = format_cache(loaded).prepare(packed, progress, release=releasable(loaded, packed))
        # Dequantized weights kept for the next candidates in half the memory left (the other half
        # for the forward passes and the rest of the machine): measured 1.6x more candidates a
        # minute on E4B on 2 cores (reports/benchmarks.md).
        format_cache(loaded).keep_dequantized(available_memory(settings.device) // 2)
    progress.start(settings.max_evals + len(baselines), description="search")
    timing = {"new": 0, "build": 0.0, "evaluate": 0.0, "wall": 0.0, "screened": 0, "screen_seconds": 0.0}
    best: list[float] = []

    def measure(candidates: list[Candidate], phase: str) -> list[float]:
        todo = [candidate for candidate in candidates if candidate.submodel_id not in journal.by_id]
        arrived: dict[int, tuple[float, float, float]] = {}
        written = 0

        def record(index: int, result: tuple[float, float, float]) -> None:
            # Journaled in the batch's order, whatever order the workers finish in, so that the
            # journal (and each record's `order`) is the same for any number of workers; a kill
            # loses only results waiting for an earlier one.
            nonlocal written
            arrived[index] = result
            while written in arrived:
                value, build, seconds = arrived.pop(written)
                timing["new"] += 1
                timing["build"] += build
                timing["evaluate"] += seconds
                journal.record(journal_record(todo[written], settings.objective, value, phase, len(journal.records),
                                       build, seconds))
                written += 1

        batch_started = time.perf_counter()
        if pool:
            pool.map(candidate_on_worker, [candidate.config() for candidate in todo], on_result=record)
        else:
            for index, candidate in enumerate(todo):
                plan = space.text_plan(candidate.config())
                weights = formatted_weights(format_cache(loaded), plan, loaded.dtype, loaded.device) \
                    if candidate.weight_formats else None
                record(index, measure_candidate(loaded.model, plan, calibration, reference, weights))
        timing["wall"] += time.perf_counter() - batch_started
        values = [journal.by_id[candidate.submodel_id]["value"] for candidate in candidates]
        for candidate, value in zip(candidates, values):
            if budget.excess(candidate) <= 0 and (not best or value < best[0]):
                best[:] = [value]
        progress.advance(len(candidates))
        if best:
            progress.describe(f"search: best {settings.objective} under budget {best[0]:.4g}")
        return values

    def screen(candidates: list[Candidate], windows: tuple[int, ...]) -> list[float]:
        # Not journaled: a resumed search screens again (the same values: same candidates, same windows).
        batch_started = time.perf_counter()
        if pool:
            results = pool.map(screening_on_worker, [(candidate.config(), windows) for candidate in candidates])
        else:
            part, part_reference = window_subset(calibration, reference, windows)
            results = []
            for candidate in candidates:
                plan = space.text_plan(candidate.config())
                weights = formatted_weights(format_cache(loaded), plan, loaded.dtype, loaded.device) \
                    if candidate.weight_formats else None
                results.append(measure_candidate(loaded.model, plan, part, part_reference, weights))
        timing["wall"] += time.perf_counter() - batch_started
        timing["screened"] += len(candidates)
        timing["screen_seconds"] += sum(build + seconds for _, build, seconds in results)
        progress.advance(len(candidates) * len(windows) / window_count(calibration))
        return [value for value, _, _ in results]

    evaluator = Evaluator(measure, settings.max_evals + len(baselines), screen, window_count(calibration))
    baseline_values = evaluator.many([candidate for _, candidate in baselines], "baseline") if baselines else []
    run_algorithm(space, budget, evaluator, settings.seed, settings.strategy)
    measured_baselines = [{"name": name, "preset": candidate.weight_formats.preset,
                            "submodel_id": candidate.submodel_id, "layers_skipped": list(candidate.layers_skipped),
                            "ffn_widths": list(candidate.ffn_widths), "effective_params": candidate.effective_params,
                            "weight_bytes": candidate.weight_bytes, "value": value,
                            "within_budget": budget.excess(candidate) <= 0}
                           for (name, candidate), value in zip(baselines, baseline_values)]
    timing["quantize_seconds"] = quantize_seconds
    if quantize_seconds:
        reuse = format_cache(loaded).reuse
        timing["dequantized_reused"] = round(reuse["hit"] / max(reuse["hit"] + reuse["miss"], 1), 3)
    summary = _finish(journal, space, budget, settings, calibration, reference_seconds, timing, evaluator,
                      time.perf_counter() - started, measured_baselines)
    return SearchResult(settings.out, summary, journal.warnings + space.runtime_warnings() + space.width_warnings())


def baseline_candidates(space: SearchSpace, settings: SearchSettings) -> list[tuple[str, Candidate]]:
    """(name, candidate) of each `--baseline` preset on the full model and on each `--baseline-config`."""
    configs = [("full", SliceConfig(name="full", layers_skipped=(), ffn_widths=tuple(space.facts.ffn_widths)))]
    for path in settings.baseline_configs:
        config = load_slice_config(path)
        configs.append((config.name, config))
    found = []
    for preset in settings.baselines:
        for name, config in configs:
            kept = space.facts.num_layers - len(config.layers_skipped)
            candidate = space.candidate(tuple(config.layers_skipped), config.widths_for(kept),
                                        WeightFormats(preset=preset))
            if not candidate.valid:
                source = "the full model" if name == "full" else f"--baseline-config {name}"
                raise InputError(f"--baseline {preset}: {source} is no valid slice here: {candidate.problems[0]}")
            found.append((f"{name}@{preset}", candidate))
    return found


def stored_formats(loaded, space: SearchSpace, candidate: Candidate):
    """The per-tensor formats of `candidate` on the loaded model (its preset's choices)."""
    inventory = {name: StoredTensor(tuple(parameter.shape), str(parameter.dtype))
                 for name, parameter in loaded.model.named_parameters()}
    return tensor_formats(space.text_plan(candidate.config()), inventory)


def _finish(journal: Journal, space: SearchSpace, budget: Budget, settings: SearchSettings, calibration: Calibration,
            reference_seconds: float, timing: dict, evaluator: Evaluator, seconds: float,
            baselines: list[dict[str, Any]]) -> SearchSummary:
    """The Pareto set of the feasible evaluated candidates as slice configs, and search.json."""
    frontier = write_frontier(journal, space, budget, evaluator, objective=settings.objective,
                              base=settings.checkpoint, dtype=settings.dtype, calibration=calibration)
    entries = frontier.entries
    new = max(timing["new"], 1)
    summary = journal.write_summary({
        "status": "complete", "version": __version__, "seed": settings.seed, "objective": settings.objective,
        "budget": {"max_params": settings.max_params, "max_bytes": settings.max_bytes, "cost": frontier.cost_key},
        "evaluated": len(evaluator.values), "evaluated_now": timing["new"], "feasible": frontier.feasible,
        "best": min(entries, key=lambda entry: entry["value"]) if entries else None, "frontier": entries,
        **({"baselines": baselines} if baselines else {}),
        "timing": {"seconds": round(seconds, 2), "reference_seconds": round(reference_seconds, 3),
                   "build_seconds_per_candidate": round(timing["build"] / new, 4),
                   "evaluate_seconds_per_candidate": round(timing["evaluate"] / new, 4),
                   # Serially, per second spent building and evaluating; on workers, per second
                   # of the driver's wall clock while they worked (all workers together).
                   "candidates_per_minute": round(60 * timing["new"] / max(
                       timing["wall"] if settings.pool else
                       timing["build"] + timing["evaluate"] + timing["screen_seconds"], 1e-9), 1),
                   # EvoPress's early selection stages: candidates run on part of the windows
                   **({"screened": timing["screened"]} if timing["screened"] else {}),
                   "workers": settings.pool.workers if settings.pool else None,
                   "calibration_tokens": calibration.tokens,
                   # one-time: every weight quantized (and back) once per format
                   **({"quantize_seconds": timing["quantize_seconds"]} if timing["quantize_seconds"] else {}),
                   # the share of weight reads served by weights kept dequantized from earlier candidates
                   **({"dequantized_reused": timing["dequantized_reused"]} if "dequantized_reused" in timing else {})}})
    return SearchSummary(summary)
