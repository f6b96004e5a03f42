"""A search's journal records, and its Pareto set written as slice configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matlab.core.calibration import Calibration
from matlab.plan import SlicePlan
from matlab.runtimes import expected_in, runs_in, runtimes_line
from matlab.search.algorithm import Evaluator
from matlab.search.journal import FRONTIER_DIR, Journal
from matlab.search.space import Budget, Candidate, SearchSpace
from matlab.slice_config import Reference, dump_slice_config
from matlab.slice_config.weight_formats import WeightFormats
from matlab.util.pareto import pareto_front
from matlab.util.sizes import short_count


def journal_record(candidate: Candidate, objective: str, value: float, phase: str, order: int, build: float,
                   seconds: float) -> dict[str, Any]:
    """One evaluated candidate as the journal keeps it."""
    formats = candidate.weight_formats
    return {"order": order, "phase": phase, "submodel_id": candidate.submodel_id,
            "layers_skipped": list(candidate.layers_skipped), "ffn_widths": list(candidate.ffn_widths),
            **({"weight_formats": formats.yaml_data()} if formats else {}),
            "kept_layers": len(candidate.ffn_widths), "effective_params": candidate.effective_params,
            "weight_bytes": candidate.weight_bytes, "objective": objective, "value": value,
            "build_seconds": round(build, 4), "evaluate_seconds": round(seconds, 4)}


def recorded_candidate(space: SearchSpace, record: dict[str, Any]) -> Candidate:
    """The candidate a journal record is of (validated and costed again by the space)."""
    formats = record.get("weight_formats")
    return space.candidate(tuple(record["layers_skipped"]), tuple(record["ffn_widths"]),
                           None if formats is None else WeightFormats.model_validate(formats))


@dataclass(frozen=True)
class Frontier:
    entries: list[dict[str, Any]]  # as search.json lists them
    feasible: int  # evaluated candidates within the budget
    cost_key: str


def write_frontier(journal: Journal, space: SearchSpace, budget: Budget, evaluator: Evaluator, *, objective: str,
                   base: str, dtype: str, calibration: Calibration) -> Frontier:
    """The Pareto set of the feasible evaluated candidates, written as slice configs to the
    journal's frontier folder (`base`: the checkpoint's name, recorded in each config)."""
    # In identity order, not journal order (workers record as results arrive): the same set gives the same frontier.
    feasible = sorted((record for record in journal.records if record["submodel_id"] in evaluator.values
                       and budget.excess(recorded_candidate(space, record)) <= 0),
                      key=lambda record: record["submodel_id"])
    cost_key = "effective_params" if budget.max_params else "weight_bytes"
    front = [feasible[i] for i in pareto_front([r[cost_key] for r in feasible], [r["value"] for r in feasible],
                                               higher_is_better=False)]
    files, entries = {}, []
    bytes_at = "GGUF file bytes at its weight_formats" if space.formats else f"weight bytes at {dtype}"
    for rank, record in enumerate(front):
        candidate = recorded_candidate(space, record)
        name = f"found-{short_count(record['effective_params'])}"
        name = name if all(entry["name"] != name for entry in entries) else f"{name}-{record['submodel_id'][:6]}"
        plan = SlicePlan.build(candidate.config(name), space.facts, name)
        measured = {"effective_params": record["effective_params"], "weight_bytes": record["weight_bytes"],
                    objective: record["value"]}
        config = candidate.config(
            name, base=Path(base).name,
            description=f"Found by matformer search: {objective} {record['value']:.4g} on "
                        f"{calibration.source}, {calibration.tokens} tokens.",
            reference=Reference(source="matformer search", name=record["submodel_id"], measured=measured,
                                notes=f"runs in: {runtimes_line(plan)}; {bytes_at}"))
        file = f"{rank:02d}-{record['submodel_id']}.yaml"
        files[file] = dump_slice_config(config)
        entries.append({"file": f"{FRONTIER_DIR}/{file}", "name": name, **{k: record[k] for k in (
            "submodel_id", "layers_skipped", "ffn_widths", "effective_params", "weight_bytes", "value")},
            **({"weight_formats": record["weight_formats"]} if "weight_formats" in record else {}),
            "runs_in": runs_in(plan), "expected_in": expected_in(plan)})
    journal.write_frontier(files)
    return Frontier(entries, len(feasible), cost_key)
