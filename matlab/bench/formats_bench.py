"""Searching widths, skips and weight formats together, against slicing first and quantizing after.

At each byte budget (a share of the full model's bytes as a bf16 GGUF file), the best slice of
`search --formats` is scored on the suite beside:
(a) the best bf16-only slice that fits (`search --formats bf16`);
(b) for each format, the best slice of a bf16 search whose budget is this one over the format's
    bytes per weight, quantized uniformly to that format: the frontier's best (by its bf16
    objective, as a user slicing first would pick) that fits at that format;
(c) uniform width and uniform format: one FFN width in every layer, no skips, one format
    everywhere; the widest width that fits for each format, the best of them by the objective.
Every search runs with the same evaluations, calibration and seed, and the mixed search with a
format per layer and tensor group and with one per layer (which one the default should be is
decided here). Candidates per minute of each search come from its own summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from matlab.arch.facts import ArchFacts, facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.bench.suite_rows import sweep_chosen
from matlab.core.calibration import kl_to_reference, make_calibration, reference_distributions
from matlab.core.elastic import build_submodel
from matlab.core.formatted import formatted_weights
from matlab.core.loading import load_model
from matlab.core.submodel import format_cache
from matlab.formats import block_shape, check_format
from matlab.io.resolve import resolve_checkpoint
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.progress import NO_PROGRESS, Progress
from matlab.search.journal import SEARCH_FILE
from matlab.search.run import SearchSettings, calibration_texts, run_search
from matlab.slice_config import SliceConfig, load_slice_config
from matlab.slice_config.weight_formats import WeightFormats


def _file_bytes(directory: Path, config: SliceConfig) -> int:
    facts = facts_from_checkpoint(directory)
    plan = SlicePlan.build(config, facts, config.name)
    return count_parameters(inventory_from_checkpoint(directory), facts, plan, text_only=True).format_bytes


def _at(config: SliceConfig, fmt: str, name: str) -> SliceConfig:
    return config.model_copy(update={"name": name, "weight_formats": WeightFormats(default=fmt), "reference": None,
                                     "description": f"{config.name} at {fmt}"})


def _best(run: Path) -> dict | None:
    return json.loads((run / SEARCH_FILE).read_text(encoding="utf-8"))["best"]


def bench_formats_search(checkpoint: str, fractions: list[float], formats: tuple[str, ...], suite: Path,
                         work_dir: Path, max_evals: int = 150, seed: int = 0, window: int = 128,
                         calibration_tokens: int = 1024, limit: int | None = None,
                         progress: Progress = NO_PROGRESS) -> dict:
    directory = resolve_checkpoint(checkpoint)
    facts = facts_from_checkpoint(directory)
    full = SliceConfig(name="full", ffn_widths=tuple(facts.ffn_widths))
    full_bf16 = _file_bytes(directory, _at(full, "bf16", "full-bf16"))
    common = _search_settings(max_evals, seed, window, calibration_tokens)
    searches: dict[str, dict] = {}

    def search(name: str, **fields) -> Path:
        out = work_dir / "searches" / name
        searches[name] = _search_record(run_search(SearchSettings(checkpoint, out, **common, **fields),
                                                   progress=progress).summary)
        return out

    objective = _kl_objective(checkpoint, directory, work_dir, common)

    result: dict = {"checkpoint": checkpoint, "full_bf16_bytes": full_bf16, "formats": list(formats),
                    "max_evals": max_evals, "seed": seed, "budgets": {}, "searches": searches}
    for fraction in fractions:
        budget = int(full_bf16 * fraction)
        tag = f"{fraction:.2f}"
        chosen: dict[str, SliceConfig] = {}
        for genes in ("group", "layer"):
            run = search(f"{tag}-mixed-{genes}", max_bytes=budget, formats=formats, format_genes=genes)
            best = _best(run)
            if best:
                chosen[f"mixed-{genes}"] = load_slice_config(run / best["file"]).model_copy(
                    update={"name": f"mixed-{genes}"})
        if fraction == fractions[0]:  # speed without formats at all (float32, as the others), after a warm-up
            search(f"{tag}-plain-float32", max_bytes=int(2 * budget))
        run = search(f"{tag}-bf16", max_bytes=budget, formats=("bf16",))
        if (best := _best(run)) is not None:
            chosen["bf16-only"] = load_slice_config(run / best["file"]).model_copy(update={"name": "bf16-only"})
        for fmt in formats:
            elements, nbytes = block_shape(check_format(fmt))
            ratio = (nbytes / elements) / 2  # bytes per weight against bf16's 2
            run = search(f"{tag}-bf16-for-{fmt}", max_bytes=int(budget / ratio), formats=("bf16",))
            fitting = []
            for path in sorted((run / "frontier").glob("*.yaml")):
                config = load_slice_config(path)
                quantized = _at(config, fmt, f"bf16-search-then-{fmt}")
                if _file_bytes(directory, quantized) <= budget:
                    fitting.append((config.reference.measured["kl"], quantized))
            if fitting:
                chosen[f"bf16-search-then-{fmt}"] = min(fitting, key=lambda item: item[0])[1]
        uniform = []
        for fmt in formats:
            for width in range(max(facts.ffn_widths), 0, -block_shape(fmt)[0]):
                config = SliceConfig(name=f"uniform-{width}-{fmt}", ffn_widths=width,
                                     weight_formats=WeightFormats(default=fmt))
                if _file_bytes(directory, config) <= budget:
                    uniform.append((objective(config), config))
                    break
        if uniform:
            chosen["uniform-width-and-format"] = min(uniform, key=lambda item: item[0])[1]
        result["budgets"][tag] = _score(checkpoint, directory, facts, chosen, budget, objective, suite,
                                        work_dir / "suite" / tag, limit, progress)
    return result


def _score(checkpoint: str, directory: Path, facts: ArchFacts, chosen: dict[str, SliceConfig], budget: int,
           objective, suite: Path, run_dir: Path, limit: int | None, progress: Progress) -> dict:
    """Each chosen config's bytes, objective and suite scores (at its formats)."""
    scored_rows, same = sweep_chosen(checkpoint, facts, chosen, suite, run_dir, limit, progress)
    scored = {"budget_bytes": budget, "configs": {}}
    for stem, config in chosen.items():
        rows = scored_rows[stem]
        scored["configs"][stem] = {"same_as": same.get(stem),
            "bytes": _file_bytes(directory, config), "kl": objective(config),
            "effective_params": int(rows["effective_params"].iloc[0]),
            "layers_skipped": list(config.layers_skipped), "ffn_widths": sorted(set(rows["ffn_widths"].iloc[0])),
            "weight_formats": rows["weight_formats"].iloc[0],
            **{f"{task}:{metric}": float(value) for task, metric, value in zip(rows["task"], rows["metric"],
                                                                               rows["value"])}}
    return scored


def _search_settings(max_evals: int, seed: int, window: int, calibration_tokens: int) -> dict:
    # seeded-nsga2: the strategy the committed numbers (reports/benchmarks.md) were measured with.
    return dict(max_evals=max_evals, seed=seed, window=window, calibration_tokens=calibration_tokens,
                strategy="seeded-nsga2")


def _kl_objective(checkpoint: str, directory: Path, work_dir: Path, common: dict) -> Callable[[SliceConfig], float]:
    """The searches' own objective, KL to the full model on their calibration, for any config."""
    loaded = load_model(directory)
    texts, source = calibration_texts(SearchSettings(checkpoint, work_dir, **common))
    calibration = make_calibration(loaded.tokenizer, texts, source, common["window"], common["calibration_tokens"])
    reference = reference_distributions(loaded.model, calibration, 256)

    def objective(config: SliceConfig) -> float:
        plan = SlicePlan.build(config, loaded.facts, config.name)
        weights = formatted_weights(format_cache(loaded), plan, loaded.dtype, loaded.device) \
            if config.weight_formats else None
        return kl_to_reference(build_submodel(loaded.model, plan, weights), calibration, reference)

    return objective


def _search_record(summary) -> dict:
    """What the benches keep of a search's summary."""
    return {"candidates_per_minute": summary["timing"]["candidates_per_minute"], "evaluated": summary["evaluated"],
            "seconds": summary["timing"]["seconds"], "quantize_seconds": summary["timing"].get("quantize_seconds"),
            "best_value": summary["best"]["value"] if summary["best"] else None}


def bench_presets_search(checkpoint: str, presets: tuple[str, ...], formats: tuple[str, ...],
                         k_formats: tuple[str, ...], suite: Path, work_dir: Path, max_evals: int = 120,
                         seed: int = 0, window: int = 128, calibration_tokens: int = 1024, limit: int | None = None,
                         progress: Progress = NO_PROGRESS) -> dict:
    """The file a user downloads (the full model at each preset) against the formats search at
    its bytes, with the K-quants among the formats and without (`matformer bench presets`).

    Each preset's budget is the tensor bytes of the full model's file at that preset; both
    searches run with the same evaluations, calibration and seed; every config is scored on the
    suite at its formats (a preset at llama-quantize's per-tensor types)."""
    directory = resolve_checkpoint(checkpoint)
    facts = facts_from_checkpoint(directory)
    full = SliceConfig(name="full", ffn_widths=tuple(facts.ffn_widths))
    common = _search_settings(max_evals, seed, window, calibration_tokens)
    objective = _kl_objective(checkpoint, directory, work_dir, common)

    result: dict = {"checkpoint": checkpoint, "formats": list(formats), "k_formats": list(k_formats),
                    "max_evals": max_evals, "seed": seed, "budgets": {}, "searches": {}}
    for preset in presets:
        downloaded = full.model_copy(update={"name": f"full-{preset}", "weight_formats": WeightFormats(preset=preset)})
        budget = _file_bytes(directory, downloaded)
        chosen = {f"full-at-{preset}": downloaded}
        for name, searched in (("search-without-k", formats), ("search-with-k", k_formats)):
            out = work_dir / "searches" / f"{preset}-{name}"
            result["searches"][f"{preset}-{name}"] = _search_record(run_search(
                SearchSettings(checkpoint, out, max_bytes=budget, formats=searched, **common),
                progress=progress).summary)
            if (best := _best(out)) is not None:
                chosen[name] = load_slice_config(out / best["file"]).model_copy(update={"name": name})
        result["budgets"][preset] = _score(checkpoint, directory, facts, chosen, budget, objective, suite,
                                           work_dir / "suite" / preset, limit, progress)
    return result
