"""The report's tables: results (scores beside published figures, costs, latencies, runtimes),
configs, and provenance; columns empty in every row are left out with a note, and paths are
shown relative to the run directory, never as the building machine's absolute paths."""

from __future__ import annotations

import os
from pathlib import Path

from matlab.harness import published
from matlab.report import analysis as pareto
from matlab.report.context import ReportContext, rows_of
from matlab.report.scores import Score, document_counts, format_score, latency_ms, score_of, stated_or_none
from matlab.slice_config import width_runs


def shown_path(path: str | Path, run_dir: Path) -> str:
    """A path as a shared report may show it: relative to the run directory where it lies beside
    it (under the run directory's parent, as the demo's sweep, control and search do), else its
    name alone; never the building machine's absolute path."""
    path = Path(str(path))
    if not path.is_absolute():
        return path.as_posix()
    base = run_dir.resolve()
    try:
        path.resolve().relative_to(base.parent)
    except ValueError:
        return path.name
    if len(base.parent.parts) <= 1:  # a run directory at the root: everything is beside it
        return path.name
    return Path(os.path.relpath(path.resolve(), base)).as_posix()


def _cell(score: Score | None, reference: float | None) -> str:
    """The measured score, and beside it the published one and the difference in points of 100."""
    if score is None:
        return ""
    if reference is None:
        return format_score(score)
    return f"{format_score(score)} / {reference:.4g} ({100 * (score.value - reference):+.1f})"


def _latency_cell(row, column: str) -> str:
    latency = latency_ms(row, column)
    if latency is None:
        return ""
    median, fastest, slowest = latency
    places = 2 if median < 10 else 1
    same = fastest == median == slowest
    return f"{median:.{places}f}" + ("" if same else f" ({fastest:.{places}f}-{slowest:.{places}f})")


def _runtimes_cell(measured: object, expected: object) -> str:
    """Measured runtimes, then the ones only expected from source, marked as such."""
    cell = ", ".join(measured) if isinstance(measured, list) else ""
    if isinstance(expected, list) and expected:
        cell += f" (expected, not measured: {', '.join(expected)})"
    return cell


def _reference(suite_model, task: str, row) -> float | None:
    """The figure published for this config on this task (the model card's, or the one its
    slice config states), to show beside the measured one."""
    match = published.published_for(suite_model, task, int(row["effective_params"]))
    if match:
        return match[1]
    suite_task = published.task_of(suite_model, task)
    return stated_or_none(row.get("stated_mmlu")) if suite_task and suite_task.stated_field else None


# Why a column can be empty in every row, said once in the note that it was left out.
EMPTY_REASONS = {"peak memory (MB)": "measured per config on CUDA only: on the CPU a process's peak covers every "
                                     "config before it",
                 "stated effective (B)": "no config states one", "stated MMLU": "no config states one"}


def _drop_empty(table: dict) -> dict:
    """The table without its columns empty in every row, and a note naming them and why."""
    rows = table["rows"] + table.get("compare_rows", [])
    keep = [i for i in range(len(table["headers"])) if any(row["cells"][i] for row in rows)]
    dropped = [header for i, header in enumerate(table["headers"]) if i not in keep]
    for row in rows:
        row["cells"] = [row["cells"][i] for i in keep]
    note = ("Left out, empty in every row: " + "; ".join(
        f"{header} ({EMPTY_REASONS[header]})" if header in EMPTY_REASONS else header for header in dropped) + "."
            ) if dropped else ""
    return {**table, "headers": [table["headers"][i] for i in keep],
            "classes": [table["classes"][i] for i in keep], "note": note}


def _result_cells(context: ReportContext, config, rows, references: bool) -> list[str]:
    cells = []
    for task, metric, _ in context.tasks:
        match = rows[(rows["submodel_id"] == config["submodel_id"]) & (rows["task"] == task)
                     & (rows["metric"] == metric)]
        score = None if match.empty else score_of(match.iloc[0])
        cells.append(_cell(score, _reference(context.suite_model, task, config) if references else None))
    peak = stated_or_none(config.get("peak_memory_bytes"))
    return cells + [f"{config['effective_params'] / 1e6:.2f}", f"{config['weight_bytes'] / 1e6:.1f}",
                    "" if peak is None else f"{peak / 1e6:,.1f}", _latency_cell(config, "decode_tokens_per_s"),
                    _latency_cell(config, "prefill_tokens_per_s"),
                    _runtimes_cell(config.get("runs_in"), config.get("expected_in"))]


def results_table(context: ReportContext) -> dict:
    """One row per config (the run's and the compared run's): scores beside published figures,
    costs, latencies and runtimes; the primary task's Pareto set marked."""
    headers = []
    for task, metric, _ in context.tasks:
        documents = document_counts([score_of(row) for _, row in rows_of(context.own, task, metric).iterrows()])
        headers.append(f"{task} {metric}" + (f" (n={documents})" if documents else ""))
    headers += ["effective params (M)", "weights (MB)", "peak memory (MB)", "decode ms/token (range)",
                "prefill ms/token (range)", "runs in (measured; expected)"]
    task, metric, higher = context.primary
    primary = rows_of(context.own, task, metric).reset_index(drop=True)
    front = {primary["submodel_id"][i] for i in pareto.pareto_front(list(primary["effective_params"]),
                                                                     list(primary["value"]), higher)}
    rows = [{"key": context.keys[config["submodel_id"]], "config": config["config"],
             "found": config["submodel_id"] in context.found_ids, "front": config["submodel_id"] in front,
             "cells": _result_cells(context, config, context.own, True)}
            for config in context.configs.to_dict("records")]
    compare_rows = [] if context.compare_configs is None else [
        {"key": context.compare_keys[config["submodel_id"]], "config": config["config"], "found": False,
         "front": False, "cells": _result_cells(context, config, context.compare, False)}
        for config in context.compare_configs.to_dict("records")]
    return _drop_empty({"headers": headers, "classes": [""] * (len(headers) - 1) + ["wrap"], "rows": rows,
                        "compare_rows": compare_rows})


def configs_table(context: ReportContext) -> dict:
    """What each config keeps: its file, layers, FFN widths, parameters and stated figures."""
    headers = ["file", "layers kept", "skipped", "FFN widths", "effective params", "PLE params", "weight bytes",
               "weight formats (GGUF)", "stated effective (B)", "stated MMLU"]
    rows = []
    for config in context.configs.to_dict("records"):
        widths = ", ".join(f"{w}x{n}" if n > 1 else str(w) for w, n in width_runs(config["ffn_widths"]))
        stated = [stated_or_none(config.get(name)) for name in ("stated_effective_params_b", "stated_mmlu")]
        ple = stated_or_none(config.get("ple_params"))
        rows.append({"key": context.keys[config["submodel_id"]], "config": config["config"], "cells": [
            shown_path(config.get("config_file") or "", context.run_dir), str(config["kept_layers"]),
            str(config["layers_skipped"]), widths, f"{config['effective_params']:,}",
            "" if ple is None else f"{int(ple):,}", f"{config['weight_bytes']:,}",
            stated_or_none(config.get("weight_formats")) or "",
            *("" if value is None else str(value) for value in stated)]})
    return _drop_empty({"headers": headers, "classes": ["name", "", "name wrap", "name wrap", *[""] * 6],
                        "rows": rows})


def provenance_rows(context: ReportContext, search_dir: Path | None, compare: Path | None) -> list[tuple[str, object]]:
    """The run's settings, with paths relative to the run directory (or names), never absolute."""
    run, run_dir = context.run, context.run_dir
    identity = run.get("identity", {})
    checkpoint = identity.get("checkpoint") if isinstance(identity.get("checkpoint"), dict) else {}
    rows = [("tool version", run.get("tool_version", "")), ("started", run.get("started", "")),
            ("checkpoint", f"{shown_path(checkpoint.get('path') or '', run_dir)} (config.json sha256 "
                           f"{checkpoint.get('config_sha256')})" if checkpoint else ""),
            ("suite", context.suite.get("name", "")),
            ("limit per task", identity.get("limit") or "none (every document)"),
            ("mode", "materialized" if identity.get("materialize") else "elastic"),
            ("device / dtype", f"{identity.get('device')} / {identity.get('dtype')}"),
            ("seed", identity.get("seed")), ("run directory", run_dir.resolve().name)]
    if search_dir is not None:
        rows.append(("search", shown_path(search_dir.resolve(), run_dir)))
    if compare is not None:
        rows.append((f"compared run ({context.compare_label})", shown_path(compare.resolve(), run_dir)))
    return rows
