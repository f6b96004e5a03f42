"""What a finished search says of itself: search.json, typed where the CLI reads it.

`SearchSummary` holds the record as written (`record`, what `--json` prints and search.json
holds) and reads it into typed fields; `summary["key"]` reads the record's own keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FrontierEntry:
    """One slice config of the frontier, as the CLI shows it."""

    name: str
    file: str  # relative to the search's directory
    effective_params: int
    weight_bytes: int  # at the run's dtype, or the GGUF file's bytes with weight formats
    value: float  # the objective
    runs_in: tuple[str, ...]
    weight_formats: dict[str, Any] | None  # the YAML form, where the search chose formats


@dataclass(frozen=True)
class Baseline:
    """A llama.cpp file type (`--baseline q4_k_m`) on the full model or a given config, measured."""

    name: str  # "full@q4_k_m", "e2b@q4_k_m"
    preset: str
    weight_bytes: int  # the GGUF file's text tensor bytes
    value: float
    within_budget: bool


@dataclass(frozen=True)
class SearchTiming:
    seconds: float
    candidates_per_minute: float
    build_seconds_per_candidate: float
    evaluate_seconds_per_candidate: float


@dataclass(frozen=True)
class SearchSummary(Mapping[str, Any]):
    record: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    @property
    def objective(self) -> str:
        return self.record["objective"]

    @property
    def evaluated(self) -> int:
        """Distinct candidates evaluated by this search, in every run of it."""
        return self.record["evaluated"]

    @property
    def evaluated_now(self) -> int:
        return self.record["evaluated_now"]

    @property
    def feasible(self) -> int:
        return self.record["feasible"]

    @property
    def frontier(self) -> list[FrontierEntry]:
        return [FrontierEntry(entry["name"], entry["file"], entry["effective_params"], entry["weight_bytes"],
                              entry["value"], tuple(entry["runs_in"]), entry.get("weight_formats"))
                for entry in self.record["frontier"]]

    @property
    def best(self) -> FrontierEntry | None:
        """The frontier entry of the best objective (None: no candidate within the budget)."""
        frontier = self.frontier
        return min(frontier, key=lambda entry: entry.value) if frontier else None

    @property
    def baselines(self) -> list[Baseline]:
        return [Baseline(entry["name"], entry["preset"], entry["weight_bytes"], entry["value"], entry["within_budget"])
                for entry in self.record.get("baselines", ())]

    def best_within(self, weight_bytes: int) -> FrontierEntry | None:
        """The frontier's best objective at no more than `weight_bytes` (None: none that small)."""
        fitting = [entry for entry in self.frontier if entry.weight_bytes <= weight_bytes]
        return min(fitting, key=lambda entry: entry.value) if fitting else None

    @property
    def timing(self) -> SearchTiming:
        timing = self.record["timing"]
        return SearchTiming(timing["seconds"], timing["candidates_per_minute"], timing["build_seconds_per_candidate"],
                            timing["evaluate_seconds_per_candidate"])
