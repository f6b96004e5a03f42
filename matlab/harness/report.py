"""Self-contained HTML reports of sweeps: plots embedded as SVG data, no external assets."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from matlab.errors import InputError, MatformerError
from matlab.harness import published
from matlab.harness.pareto import pareto_front
from matlab.harness.results import RESULTS_FILE, RUN_FILE, SERIAL_LATENCY, json_kind, read_json_file, read_results
from matlab.io.staging import staged_output
from matlab.slice_config import width_runs

REPORT_NAME = "index.html"


class ReportError(MatformerError):
    """The run directory has no results to report."""


@dataclass(frozen=True)
class Plot:
    title: str
    svg_base64: str
    note: str


def _plot(title: str, svg: bytes, note: str) -> Plot:
    return Plot(title, base64.b64encode(svg).decode("ascii"), note)


# The fields of a result row the report draws and tabulates, beyond those every row has; the
# throughput is empty in a sweep killed before it was measured.
REPORT_FIELDS = ("effective_params", "weight_bytes", "kept_layers", "layers_skipped", "ffn_widths", "checkpoint",
                 "device", "dtype")
MEASURED_LATER = ("decode_tokens_per_s", "prefill_tokens_per_s")


def _run_record(run_dir: Path) -> dict:
    """run.json (the sweep's settings), {} without one; a damaged one is refused, naming it."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return {}
    fix = "restore it, or move it aside to report the results without the run's settings"
    run = read_json_file(path, fix)
    if not isinstance(run, dict):
        raise InputError(f"{path}: holds {json_kind(run)}, not an object; {fix}")
    identity = run.get("identity", {})
    suite = identity.get("suite", {}) if isinstance(identity, dict) else None
    tasks = suite.get("tasks", []) if isinstance(suite, dict) else None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) and isinstance(task.get("name"), str)
                                              and isinstance(task.get("metric"), str) for task in tasks):
        raise InputError(f"{path}: not the record of a sweep (its identity.suite.tasks cannot be read); {fix}")
    return run


def _load(run_dir: Path):
    frame = read_results(run_dir)
    if frame.empty:
        raise ReportError(f"{run_dir}: no results.jsonl rows; run `matformer sweep ... --out {run_dir}` first")
    missing = [name for name in REPORT_FIELDS if name not in frame.columns or frame[name].isna().any()] + \
        [name for name in MEASURED_LATER if name not in frame.columns]
    if missing:
        raise ReportError(f"{run_dir / RESULTS_FILE}: rows without {', '.join(missing)}, which the report draws; "
                          f"delete it and run the sweep again with --out {run_dir} to rebuild it")
    return frame, _run_record(run_dir)


def _metric_series(frame, task: str, metric: str):
    rows = frame[(frame["task"] == task) & (frame["metric"] == metric)].sort_values("effective_params")
    return rows.reset_index(drop=True)


def _stated(value):
    """A stated figure, or None where the config states none (pandas reads those as NaN)."""
    return None if value is None or value != value else value  # NaN is the one value unequal to itself


def _throughput(row, column: str) -> str:
    """'median (min-max)' over the round-robin rounds; older runs have the median only."""
    median, low, high = (_stated(row.get(name)) for name in (column, f"{column}_min", f"{column}_max"))
    if median is None:
        return ""
    return f"{median:.1f}" + ("" if low is None else f" ({low:.1f}-{high:.1f})")


def _peak_memory(row) -> str:
    peak = _stated(row.get("peak_memory_bytes"))
    return "" if peak is None else f"{int(peak):,}"


def _latency_note(rows) -> str:
    first = rows.iloc[0]
    rounds, threads = _stated(first.get("latency_rounds")), _stated(first.get("latency_threads"))
    how = f"the median of {int(rounds)} round-robin rounds over all configs, {int(threads)} threads, " \
        if rounds is not None else ""
    place = _stated(first.get("latency_measured_on"))
    where = f" ({place})" if place and place != SERIAL_LATENCY else ""
    device = first.get("latency_device") or first["device"]
    return (f"Latency: {how}on {device}{where} in {first['dtype']}; the results table gives "
            "each config's range. Peak memory per config is measured on CUDA only (on the CPU a "
            "process's peak covers every config before it).")


def _reference(suite_model, task: str, row) -> float | None:
    """The figure published for this config on this task (the model card's, or the one its
    slice config states), to show beside the measured one."""
    match = published.published_for(suite_model, task, int(row["effective_params"]))
    if match:
        return match[1]
    suite_task = published.task_of(suite_model, task)
    return _stated(row.get("stated_mmlu")) if suite_task and suite_task.stated_field else None


def _search_results(run_dir: Path, search: Path | None):
    """(search.json, candidates, the found configs' sweep rows or None) of the search whose
    results the report shows: `search`, or the search whose confirm run `run_dir` is."""
    import pandas as pd

    from matlab.search.journal import CANDIDATES_FILE, CONFIRM_DIR, RECORD_FIELDS, SEARCH_FILE, read_journal

    if search is None and (run_dir.parent / SEARCH_FILE).is_file() and run_dir.name == CONFIRM_DIR:
        search = run_dir.parent
    if search is None:
        return None, None, None
    if not (search / SEARCH_FILE).is_file():
        raise ReportError(f"--search {search}: no {SEARCH_FILE}; pass the --out directory of `matformer search`")
    summary = read_json_file(search / SEARCH_FILE, "restore it, or run the search again into a new --out")
    finished = isinstance(summary, dict) and summary.get("status") == "complete"
    if not finished:
        status = summary.get("status") if isinstance(summary, dict) else None
        raise ReportError(f"--search {search}: {search / SEARCH_FILE} is not the record of a finished search "
                          f"(status {status!r}); run the search again with the same arguments to finish it")
    if not isinstance(summary.get("frontier"), list) or not isinstance(summary.get("budget"), dict) or \
            summary["budget"].get("cost") not in ("effective_params", "weight_bytes") or \
            not all(isinstance(entry, dict) and "submodel_id" in entry for entry in summary["frontier"]):
        raise ReportError(f"--search {search}: {search / SEARCH_FILE} has no readable frontier and budget; run the "
                          "search again with the same arguments to rewrite it")
    # A torn last line is an error here (the search drops it and evaluates it again; a report cannot).
    records, _ = read_journal(search / CANDIDATES_FILE, drop_torn=False) if (search / CANDIDATES_FILE).is_file() \
        else ([], None)
    candidates = pd.DataFrame.from_records(records, columns=None if records else list(RECORD_FIELDS))
    confirm = search / CONFIRM_DIR
    found = read_results(confirm) if confirm.resolve() != run_dir.resolve() else None
    return summary, candidates, found


def build_report(run_dir: str | Path, out: str | Path, compare: str | Path | None = None,
                 compare_label: str = "compared run", force: bool = False, search: str | Path | None = None) -> Path:
    """Write `out/index.html` for the sweep in `run_dir` (optionally overlaying `compare`, and the
    configs a search found: `search`, or the search `run_dir` confirms)."""
    import pandas as pd
    from jinja2 import Environment, select_autoescape

    from matlab.harness import plots

    run_dir, out = Path(run_dir), Path(out)
    frame, run = _load(run_dir)
    search_summary, candidates, found_frame = _search_results(run_dir, Path(search) if search else None)
    suite_model = published.run_suite(run)
    found_ids = {entry["submodel_id"] for entry in search_summary["frontier"]} if search_summary else set()
    budget = (search_summary or {}).get("budget", {})
    suite = run.get("identity", {}).get("suite", {})
    tasks = [(t["name"], t["metric"], t.get("higher_is_better", True)) for t in suite.get("tasks", [])] or \
        sorted({(task, metric, True) for task, metric in zip(frame["task"], frame["metric"])})
    primary_task, primary_metric, primary_higher = tasks[0]
    primary = _metric_series(frame, primary_task, primary_metric)
    compare_frame = _load(Path(compare))[0] if compare else None

    figures = []
    for task, metric, higher in tasks:
        series = _metric_series(frame, task, metric)
        if series.empty:
            continue
        suite_task = published.task_of(suite_model, task)
        stated = series.dropna(subset=["stated_mmlu"]) if suite_task and suite_task.stated_field and \
            "stated_mmlu" in series.columns else series.iloc[0:0]
        reference = (list(stated["effective_params"]), list(stated["stated_mmlu"]), list(stated["config"])) \
            if len(stated) else None
        published_marks = published.marks(suite_model, task)
        overlay = None
        if compare_frame is not None:
            other = _metric_series(compare_frame, task, metric)
            if not other.empty:
                overlay = (list(other["effective_params"]), list(other["value"]), list(other["config"]), compare_label)
        found = None
        if found_frame is not None and not found_frame.empty:
            rows = _metric_series(found_frame, task, metric)
            found = (list(rows["effective_params"]), list(rows["value"]), list(rows["config"])) if len(rows) else None
        svg = plots.tradeoff_plot(list(series["config"]), list(series["effective_params"]), list(series["value"]),
                                  cost_label="effective parameters", score_label=f"{task} {metric}",
                                  higher_is_better=higher, reference=reference, compare=overlay, found=found,
                                  budget=budget.get("max_params") if found else None, published=published_marks)
        figures.append(_plot(f"{task} ({metric}) against effective parameters", svg,
                             "Red: Pareto frontier (no other config is both smaller and better)."
                             + (" Stars: configs found by `matformer search` (dashed: its budget)." if found else "")
                             + (" Triangles: figures stated by the configs' source." if reference else "")
                             + (" Diamonds: the published figures, at the published models' effective parameters."
                                if published_marks else "")
                             + (f" Crosses: {compare_label}." if overlay else "")))
    for cost_column, cost_label, transform in (("weight_bytes", "submodel weight bytes", lambda v: v),
                                               ("decode_tokens_per_s", "decode latency (ms per token)",
                                                lambda v: 1000.0 / v)):
        svg = plots.tradeoff_plot(list(primary["config"]), [transform(v) for v in primary[cost_column]],
                                  list(primary["value"]), cost_label=cost_label,
                                  score_label=f"{primary_task} {primary_metric}", higher_is_better=primary_higher)
        figures.append(_plot(f"{primary_task} ({primary_metric}) against {cost_label}", svg,
                             _latency_note(primary) if cost_column == "decode_tokens_per_s"
                             else "Bytes of the weights the slice uses."))

    if search_summary is not None:
        cost = budget["cost"]
        limit = budget["max_params"] if cost == "effective_params" else budget["max_bytes"]
        front = sorted((i for i, submodel in enumerate(candidates["submodel_id"]) if submodel in found_ids),
                       key=lambda i: candidates[cost][i])
        svg = plots.search_plot(list(candidates[cost]), list(candidates["value"]), front,
                                cost_label=cost.replace("_", " "), objective=search_summary["objective"], budget=limit)
        figures.append(_plot(f"The search: {len(candidates)} candidates' {search_summary['objective']} against "
                             f"{cost.replace('_', ' ')}", svg,
                             "Each point is one evaluated submodel (an elastic view of the full model), measured on "
                             "calibration text; stars: the Pareto set within the budget, written as slice configs."))
    all_rows = frame if found_frame is None else pd.concat([frame, found_frame], ignore_index=True)
    per_config = all_rows.drop_duplicates("submodel_id").sort_values("effective_params")
    num_layers = int(max(k + len(s) for k, s in zip(per_config["kept_layers"], per_config["layers_skipped"])))
    base_width = int(max(max(widths) for widths in per_config["ffn_widths"]))
    heatmap = plots.width_heatmap(list(per_config["config"]), num_layers, list(per_config["layers_skipped"]),
                                  list(per_config["ffn_widths"]), base_width)
    figures.append(_plot("Per-layer FFN widths and skipped layers", heatmap,
                         f"Widths as a fraction of the widest layer ({base_width}); {num_layers} base layers."))

    columns = [(task, metric) for task, metric, _ in tasks]
    primary_all = _metric_series(all_rows, primary_task, primary_metric)
    front = set(pareto_front(list(primary_all["effective_params"]), list(primary_all["value"]), primary_higher))
    front_ids = {primary_all["submodel_id"][i] for i in front}
    result_rows = []
    for _, config in per_config.iterrows():
        values = []
        for task, metric in columns:
            match = all_rows[(all_rows["submodel_id"] == config["submodel_id"]) & (all_rows["task"] == task)
                             & (all_rows["metric"] == metric)]
            values.append(published.cell(None if match.empty else float(match["value"].iloc[0]),
                                         _reference(suite_model, task, config)))
        runtimes, expected = config.get("runs_in"), config.get("expected_in")
        values += [f"{config['effective_params']:,}", f"{config['weight_bytes']:,}", _peak_memory(config),
                   _throughput(config, "decode_tokens_per_s"), _throughput(config, "prefill_tokens_per_s"),
                   _runtimes_cell(runtimes, expected)]
        result_rows.append({"config": config["config"], "cells": values, "front": config["submodel_id"] in front_ids,
                            "found": config["submodel_id"] in found_ids})
    configs = [{**row, "widths": ", ".join(f"{w}x{n}" if n > 1 else str(w) for w, n in width_runs(row["ffn_widths"])),
                "stated_effective_params_b": _stated(row.get("stated_effective_params_b")),
                "stated_mmlu": _stated(row.get("stated_mmlu"))}
               for row in per_config.to_dict("records")]
    identity = run.get("identity", {})
    provenance = [("tool version", run.get("tool_version", "")), ("started", run.get("started", "")),
                  ("checkpoint", json.dumps(identity.get("checkpoint", {}))), ("suite", suite.get("name", "")),
                  ("limit per task", identity.get("limit")), ("mode", "materialized" if identity.get("materialize")
                                                              else "elastic"),
                  ("device / dtype", f"{identity.get('device')} / {identity.get('dtype')}"),
                  ("seed", identity.get("seed")), ("run directory", str(run_dir.resolve()))]
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = environment.from_string((resources.files("matlab") / "data" / "templates" / "report.html.j2")
                                       .read_text(encoding="utf-8"))
    html = template.render(
        title=f"MatFormer Lab sweep: {suite.get('name', '')} on {Path(str(primary['checkpoint'].iloc[0])).name}",
        summary=f"{len(per_config)} configs, {len(frame)} result rows. Every point is measured by MatFormer Lab; "
                "stated figures are shown only beside them.",
        plots=figures, primary=f"{primary_task} {primary_metric}",
        result_columns=[f"{task} {metric}" for task, metric in columns] + [
            "effective params", "weight bytes", "peak memory", "decode tok/s (range)", "prefill tok/s (range)",
            "runs in (measured; expected)"],
        searched=search_summary is not None,
        result_rows=result_rows, configs=configs, provenance=provenance,
        published_rows=published.comparison(suite_model, {
            (task, int(params)): float(value) for task, metric, params, value
            in zip(frame["task"], frame["metric"], frame["effective_params"], frame["value"])
            if (task, metric) in set(columns)}),
        published_note=published.dtype_note(suite_model, str(primary["dtype"].iloc[0])))
    with staged_output(out, force, inputs=(run_dir, compare, search)) as temporary:
        (temporary / REPORT_NAME).write_text(html, encoding="utf-8")
    return out / REPORT_NAME


def _runtimes_cell(measured: object, expected: object) -> str:
    """Measured runtimes, then the ones only expected from source, marked as such."""
    cell = ", ".join(measured) if isinstance(measured, list) else ""
    if isinstance(expected, list) and expected:
        cell += f" (expected, not measured: {', '.join(expected)})"
    return cell
