"""The report's figures: the series, keys, titles and notes of each plot, drawn by
`matlab.report.draw` and embedded as base64 SVG (matplotlib is imported only when drawing)."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

from matlab.harness import published
from matlab.harness.results import SERIAL_LATENCY
from matlab.report import analysis as pareto
from matlab.report.conclusions import latency_sentences
from matlab.report.context import ReportContext, measured_points, rows_of
from matlab.report.scores import BINARY_METRICS, Score, document_counts, latency_ms, log_scale, score_of, stated_or_none


@dataclass(frozen=True)
class Plot:
    """One figure of a report, its SVG in base64."""

    title: str
    svg_base64: str
    note: str
    key: str  # which number is which config, for the plot's points


def _plot(title: str, svg: bytes, note: str, key: str = "") -> Plot:
    return Plot(title, base64.b64encode(svg).decode("ascii"), note, key)


# Axis labels of the costs a report draws against (every cost in millions, so its axis has no offset).
COSTS = {"effective_params": "effective parameters (M)", "weight_bytes": "weights (MB, 10\u2076 bytes)",
         "decode_latency": "decode latency (ms per token; bars: fastest to slowest round)"}


def _mark(row, key: str, cost: str, doubtful: bool = False):
    from matlab.report.draw import Mark

    score = score_of(row)
    if cost == "decode_latency":
        latency = latency_ms(row, "decode_tokens_per_s")
        x, spread = (latency[0], latency[1:]) if latency else (math.nan, None)
    else:
        x, spread = row[cost] / 1e6, None
    return Mark(key, float(x), score.value, score.stderr, spread, doubtful)


def _series(context: ReportContext, task: str, metric: str, cost: str, references: bool = False) -> list:
    """The plot's series: hand-written configs, found configs, the compared run, and (against
    effective parameters) the figures stated by the configs' source and published for the models."""
    from matlab.report.draw import Mark, Series

    rows = rows_of(context.own, task, metric).sort_values("effective_params")
    series = []
    for kind, label in (("configs", "hand-written configs" if context.found_ids else "configs"),
                        ("found", "found by search")):
        marks = [_mark(row, context.keys[row["submodel_id"]], cost, context.doubted(cost, "own", row))
                 for _, row in rows.iterrows() if context.kind(row["submodel_id"]) == kind]
        if marks:
            series.append(Series(label, kind, marks))
    if context.compare is not None:
        other = rows_of(context.compare, task, metric)
        marks = [_mark(row, context.compare_keys[row["submodel_id"]], cost, context.doubted(cost, "compare", row))
                 for _, row in other.iterrows()]
        if marks:
            series.append(Series(context.compare_label, "compare", marks))
    if references:
        suite_task = published.task_of(context.suite_model, task)
        if suite_task and suite_task.stated_field and "stated_mmlu" in rows.columns:
            stated = rows.dropna(subset=["stated_mmlu"])
            if len(stated):
                series.append(Series("stated by source", "stated", [
                    Mark("", row["effective_params"] / 1e6, float(row["stated_mmlu"]))
                    for _, row in stated.iterrows()]))
        marks = published.marks(context.suite_model, task)
        if marks:
            series.append(Series("published", "published", [Mark(label, x / 1e6, y) for x, y, label in marks]))
    return series


def _plot_title(scores: list[Score], noisy: tuple[int, int]) -> str:
    documents = document_counts(scores)
    if any(score.estimated for score in scores):
        bars = "bars: \u00b11 binomial stderr (lm-eval gives none under --limit)"
    elif any(score.stderr is not None for score in scores):
        bars = "bars: \u00b11 stderr"
    else:
        bars = "no stderr for this metric"
    title = (f"each score rests on {documents} documents; " if documents else "") + bars
    steps, known = noisy
    return title + (f"; {steps} of {known} frontier steps are within noise" if steps else "")


def _key(context: ReportContext, series_list: list) -> str:
    """Which number is which config, for the points of one plot."""
    keyed = {mark.key for series in series_list if series.kind in ("configs", "found", "compare")
             for mark in series.marks}
    names = [(context.keys[sid], name) for sid, name in zip(context.configs["submodel_id"], context.configs["config"])]
    if context.compare_configs is not None:
        names += [(context.compare_keys[sid], f"{name} of {context.compare_label}")
                  for sid, name in zip(context.compare_configs["submodel_id"], context.compare_configs["config"])]
    return " \u00b7 ".join(f"{key} {name}" for key, name in names if key in keyed)


def _score_label(metric: str) -> str:
    return f"{metric} (fraction)" if metric in BINARY_METRICS or metric in ("f1", "em") else metric


def score_figures(context: ReportContext) -> list[Plot]:
    """Each task's score against effective parameters, with stated and published figures."""
    from matlab.report import draw as plots

    figures = []
    for task, metric, higher in context.tasks:
        rows = rows_of(context.own, task, metric)
        if rows.empty:
            continue
        series = _series(context, task, metric, "effective_params", references=True)
        scores = [score_of(row) for _, row in rows.iterrows()]
        budget = context.budget("effective_params") if context.found_ids else None
        log_score = log_scale([m.score for s in series for m in s.marks])
        svg = plots.tradeoff_plot(series, cost_label=COSTS["effective_params"],
                                  score_label=_score_label(metric) + (" (log scale)" if log_score else ""),
                                  title=_plot_title(scores, pareto.noisy_steps(measured_points(context, rows), higher)),
                                  higher_is_better=higher, budget=budget, log_score=log_score)
        kinds = {s.kind for s in series}
        figures.append(_plot(
            f"{task} ({metric}) against effective parameters", svg,
            "Red line: the Pareto frontier (no other config is both smaller and better)."
            + (" Stars: configs found by `matformer search` (dashed: its budget)." if "found" in kinds else "")
            + (f" Crosses: {context.compare_label}." if "compare" in kinds else "")
            + (" Triangles: figures stated by the configs' source." if "stated" in kinds else "")
            + (" Diamonds: the published figures, at the published models' effective parameters."
               if "published" in kinds else ""), _key(context, series)))
    return figures


def cost_figures(context: ReportContext) -> list[Plot]:
    """The primary task's score against weight bytes and against decode latency."""
    from matlab.report import draw as plots

    task, metric, higher = context.primary
    rows = rows_of(context.own, task, metric)
    scores = [score_of(row) for _, row in rows.iterrows()]
    figures = []
    formats = "weight_formats" in context.own and context.own["weight_formats"].notna().any()
    bytes_note = "Bytes of the weights each slice holds (a deployed copy's size)." + (
        " A config with weight formats counts the text tensors of its GGUF file at those formats, and is "
        "scored at them." if formats else "")
    for cost, note in (("weight_bytes", bytes_note), ("decode_latency", _latency_note(context))):
        series = _series(context, task, metric, cost)
        # Latencies a busy machine stretched over decades get a log axis, as scores do.
        svg = plots.tradeoff_plot(series, cost_label=COSTS[cost], score_label=_score_label(metric),
                                  title=_plot_title(scores, (0, 0)), higher_is_better=higher,
                                  budget=context.budget(cost) if context.found_ids else None,
                                  log_score=log_scale([m.score for s in series for m in s.marks]),
                                  log_cost=cost == "decode_latency" and log_scale([m.cost for s in series
                                                                                    for m in s.marks]))
        figures.append(_plot(f"{task} ({metric}) against {COSTS[cost].split(' (')[0]}", svg,
                             "Red line: the Pareto frontier on this cost. " + note, _key(context, series)))
    return figures


def _latency_note(context: ReportContext) -> str:
    first = context.frame.iloc[0]
    rounds, threads = stated_or_none(first.get("latency_rounds")), stated_or_none(first.get("latency_threads"))
    how = f"the median of {int(rounds)} round-robin rounds over all configs, {int(threads)} threads, " \
        if rounds is not None and threads is not None else ""
    place = stated_or_none(first.get("latency_measured_on"))
    where = f" ({place})" if place and place != SERIAL_LATENCY else ""
    device = stated_or_none(first.get("latency_device")) or first["device"]
    apart = [what for what, present in (("the found configs in the search's confirm run",
                                         len(context.own) > len(context.frame)),
                                        (context.compare_label, context.compare is not None)) if present]
    note = (f"Latency: {how}on {device}{where} in {first['dtype']}; bars span each config's fastest to slowest round."
            + (f" Timed in runs of their own: {' and '.join(apart)}; configs timed apart compare less well than "
               "configs timed together." if apart else ""))
    return " ".join([note, *latency_sentences(context)])


def search_figure(context: ReportContext) -> Plot | None:
    """The search's candidates and found frontier on its objective; None without a search."""
    from matlab.report import draw as plots

    if context.search_summary is None:
        return None
    summary, candidates = context.search_summary, context.candidates
    cost = summary["budget"]["cost"]
    objective = summary["objective"]
    marks = [plots.Mark("", row[cost] / 1e6, float(row["value"])) for _, row in candidates.iterrows()]
    found = [plots.Mark(context.keys.get(row["submodel_id"], ""), row[cost] / 1e6, float(row["value"]))
             for _, row in candidates.iterrows() if row["submodel_id"] in context.found_ids]
    values = [mark.score for mark in marks]
    svg = plots.search_plot(plots.Series("evaluated candidates", "candidates", marks),
                            plots.Series("found frontier (within budget)", "found", found), cost_label=COSTS[cost],
                            objective_label=f"{objective} on calibration text (lower is better)",
                            budget=context.budget(cost), log_objective=objective == "kl" or log_scale(values))
    keys = {mark.key for mark in found}
    key = " \u00b7 ".join(f"{context.keys[sid]} {name}" for sid, name in
                          zip(context.configs["submodel_id"], context.configs["config"]) if context.keys[sid] in keys)
    return _plot(f"The search: {len(candidates)} candidates' {objective} against {COSTS[cost].split(' (')[0]}", svg,
                 "Each point is one evaluated submodel (an elastic view of the full model), measured on calibration "
                 "text; stars: the Pareto set within the budget, written as slice configs and numbered as in the "
                 "results table.", key)


def heatmap_figure(context: ReportContext) -> Plot:
    """Each config's per-layer FFN widths and skipped layers."""
    from matlab.report import draw as plots

    configs = context.configs
    num_layers = int(max(k + len(s) for k, s in zip(configs["kept_layers"], configs["layers_skipped"])))
    base_width = int(max(max(widths) for widths in configs["ffn_widths"]))
    star = "\u2605 "
    names = [f"{context.keys[sid]}  {star if sid in context.found_ids else ''}{name}"
             for sid, name in zip(configs["submodel_id"], configs["config"])]
    svg = plots.width_heatmap(names, num_layers, list(configs["layers_skipped"]), list(configs["ffn_widths"]),
                              base_width)
    return _plot("Per-layer FFN widths and skipped layers", svg,
                 f"One colour per FFN width (the widest: {base_width}); {num_layers} base layers; hatched: skipped. "
                 "Rows are numbered as in the results table.")
