"""The rows every section of a report reads, gathered once: the run's and the found configs'
(one key per config), the compared run's, the search's, and the latency orders in doubt."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from matlab.harness import published
from matlab.report import analysis as pareto
from matlab.report.scores import latency_ms, score_of


@dataclass
class ReportContext:
    """What every section of a report reads: the run's rows and the found configs' (`own`, one
    key per config), the compared run's (`compare`), the search, and the latency doubts."""

    run_dir: Path
    run: dict
    suite: dict
    suite_model: object
    tasks: list[tuple[str, str, bool]]
    frame: object
    own: object
    configs: object
    found_ids: set
    keys: dict
    compare: object
    compare_configs: object
    compare_keys: dict
    compare_label: str
    search_summary: dict | None
    candidates: object
    doubts: list
    unsteady: list
    doubtful: set

    @property
    def primary(self) -> tuple[str, str, bool]:
        return self.tasks[0]

    def budget(self, cost: str) -> float | None:
        """The search's budget on `cost`, in millions (None without a search or such a budget)."""
        budget = (self.search_summary or {}).get("budget", {})
        limit = budget.get({"effective_params": "max_params", "weight_bytes": "max_bytes"}.get(cost, ""))
        return None if limit is None else limit / 1e6

    def doubted(self, cost: str, source: str, row) -> bool:
        """Whether to ring the point of `row` (of the run or the compared one): on the latency
        plot, where its latency order is in doubt."""
        return cost == "decode_latency" and (source, row["submodel_id"]) in self.doubtful

    def kind(self, submodel_id: str) -> str:
        return "found" if submodel_id in self.found_ids else "configs"


def _per_config(rows):
    return rows.drop_duplicates("submodel_id").sort_values(["effective_params", "config"]).reset_index(drop=True)


def build_context(run_dir: Path, frame, run: dict, found_frame, search_summary, candidates, compare_frame,
                  compare_label: str) -> ReportContext:
    """The context of a report on `frame` (with the found configs' rows and the compared run's),
    its configs numbered and the latency orders in doubt worked out."""
    import pandas as pd

    suite = run.get("identity", {}).get("suite", {})
    tasks = [(t["name"], t["metric"], t.get("higher_is_better", True)) for t in suite.get("tasks", [])] or \
        sorted({(task, metric, True) for task, metric in zip(frame["task"], frame["metric"])})
    own = frame if found_frame is None or found_frame.empty else pd.concat([frame, found_frame], ignore_index=True)
    own = own.drop_duplicates(["submodel_id", "task", "metric"]).reset_index(drop=True)
    configs = _per_config(own)
    compare_configs = _per_config(compare_frame) if compare_frame is not None else None
    context = ReportContext(
        run_dir, run, suite, published.run_suite(run), tasks, frame, own, configs,
        {entry["submodel_id"] for entry in search_summary["frontier"]} if search_summary else set(),
        {sid: str(number) for number, sid in enumerate(configs["submodel_id"], 1)}, compare_frame, compare_configs,
        {sid: f"C{number}" for number, sid in enumerate(compare_configs["submodel_id"], 1)}
        if compare_configs is not None else {}, compare_label, search_summary, candidates, [], [], set())
    timings = {}
    for source, table in (("own", configs), ("compare", compare_configs)):
        for row in [] if table is None else table.to_dict("records"):
            latency = latency_ms(row, "decode_tokens_per_s")
            if latency:
                timings[(source, row["submodel_id"])] = pareto.Timing(
                    config_name(context, source, row), int(row["kept_layers"]), int(row["weight_bytes"]), *latency)
    context.doubts = pareto.latency_doubts(list(timings.values()))
    context.unsteady = pareto.unsteady(list(timings.values()))
    # Ringed: configs whose own rounds disagree, and those of orders the rounds' spread cannot
    # explain (orders within it are noise, said but not ringed).
    places = {timing: place for place, timing in timings.items()}
    context.doubtful = {places[timing] for timing in context.unsteady} | \
        {places[timing] for *pair, overlap in context.doubts if not overlap for timing in pair}
    return context


def config_name(context: ReportContext, source: str, row) -> str:
    """A row's config as sentences name it (the compared run's with its label)."""
    return row["config"] if source == "own" else f"{row['config']} of {context.compare_label}"


def rows_of(rows, task: str, metric: str):
    """The rows of one task's metric."""
    return rows[(rows["task"] == task) & (rows["metric"] == metric)]


def measured_points(context: ReportContext, rows, source: str = "own") -> list[pareto.Measured]:
    """The rows' finite scores against effective parameters (millions), as pareto measures them."""
    return [pareto.Measured(config_name(context, source, row), row["effective_params"] / 1e6, score.value, score.stderr)
            for _, row in rows.iterrows() for score in [score_of(row)] if math.isfinite(score.value)]
