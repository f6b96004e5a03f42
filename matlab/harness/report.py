"""Self-contained HTML reports of sweeps: plots embedded as SVG data, no external assets.

Every point of every plot carries the number of its row in the results table; scores carry
their standard error and how many documents they rest on; paths are shown relative to the run
directory (or by name), so a report can be committed or shared without naming the machine
that built it.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from matlab.errors import InputError, MatformerError
from matlab.harness import pareto, published
from matlab.harness.results import RESULTS_FILE, RUN_FILE, SERIAL_LATENCY, json_kind, read_json_file, read_results
from matlab.io.staging import staged_output
from matlab.slice_config import width_runs

REPORT_NAME = "index.html"
# Metrics that are a mean of 0/1 outcomes: where lm-eval gives no stderr (it computes none
# under --limit), the binomial one is estimated from the score and the documents.
BINARY_METRICS = ("acc", "acc_norm", "exact_match")


class ReportError(MatformerError):
    """The run directory has no results to report."""


@dataclass(frozen=True)
class Plot:
    title: str
    svg_base64: str
    note: str
    key: str  # which number is which config, for the plot's points


def _plot(title: str, svg: bytes, note: str, key: str = "") -> Plot:
    return Plot(title, base64.b64encode(svg).decode("ascii"), note, key)


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


def _stated(value):
    """A stated figure, or None where the config states none (pandas reads those as NaN)."""
    return None if value is None or value != value else value  # NaN is the one value unequal to itself


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


@dataclass(frozen=True)
class Score:
    value: float
    stderr: float | None
    samples: int | None
    estimated: bool  # the stderr is the binomial estimate, not lm-eval's


def _score(row) -> Score:
    value = float(row["value"])
    stderr, samples = _stated(row.get("stderr")), _stated(row.get("samples"))
    samples = int(samples) if samples is not None else None
    if isinstance(stderr, (int, float)) and math.isfinite(stderr):
        return Score(value, float(stderr), samples, False)
    if _stated(row.get("limit")) is not None and row["metric"] in BINARY_METRICS and samples and samples > 1 \
            and 0 <= value <= 1:
        return Score(value, math.sqrt(value * (1 - value) / (samples - 1)), samples, True)
    return Score(value, None, samples, False)


def _decimals(stderr: float) -> int:
    """Decimals that show a standard error to two significant digits where its first is 1 or 2,
    to one otherwise (0.015, 0.009: the usual rounding of uncertainties)."""
    exponent = math.floor(math.log10(stderr))
    return max(0, (1 if stderr / 10 ** exponent < 3 else 0) - exponent)


def format_score(score: Score) -> str:
    """'0.683 ± 0.015' (the value to its stderr's precision), or four digits without one."""
    if math.isnan(score.value):
        return "nan"
    if score.stderr is None:
        return f"{score.value:.4g}"
    if score.stderr == 0:  # every document scored alike
        return f"{score.value:.4g} \u00b1 0"
    places = _decimals(score.stderr)
    return f"{score.value:.{places}f} \u00b1 {score.stderr:.{places}f}"


def _cell(score: Score | None, reference: float | None) -> str:
    """The measured score, and beside it the published one and the difference in points of 100."""
    if score is None:
        return ""
    if reference is None:
        return format_score(score)
    return f"{format_score(score)} / {reference:.4g} ({100 * (score.value - reference):+.1f})"


def _latency(row, column: str) -> tuple[float, float, float] | None:
    """(median, fastest, slowest) ms per token over the rounds, from the rows' tokens/s (a round's
    slowest throughput is its longest latency); None where not measured."""
    median, fastest, slowest = (_stated(row.get(name)) for name in (column, f"{column}_max", f"{column}_min"))
    if median is None or median <= 0:
        return None
    fastest, slowest = (median if value is None or value <= 0 else value for value in (fastest, slowest))
    return 1000.0 / median, 1000.0 / fastest, 1000.0 / slowest


def _latency_cell(row, column: str) -> str:
    latency = _latency(row, column)
    if latency is None:
        return ""
    median, fastest, slowest = latency
    places = 2 if median < 10 else 1
    same = fastest == median == slowest
    return f"{median:.{places}f}" + ("" if same else f" ({fastest:.{places}f}-{slowest:.{places}f})")


def _documents(scores: list[Score]) -> str:
    counts = sorted({score.samples for score in scores if score.samples})
    if not counts:
        return ""
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}"


def _reference(suite_model, task: str, row) -> float | None:
    """The figure published for this config on this task (the model card's, or the one its
    slice config states), to show beside the measured one."""
    match = published.published_for(suite_model, task, int(row["effective_params"]))
    if match:
        return match[1]
    suite_task = published.task_of(suite_model, task)
    return _stated(row.get("stated_mmlu")) if suite_task and suite_task.stated_field else None


def _search_results(run_dir: Path, search: Path | None):
    """(search.json, candidates, the found configs' sweep rows or None, the search directory) of
    the search whose results the report shows: `search`, or the search whose confirm run
    `run_dir` is."""
    import pandas as pd

    from matlab.search.journal import CANDIDATES_FILE, CONFIRM_DIR, RECORD_FIELDS, SEARCH_FILE, read_journal

    if search is None and (run_dir.parent / SEARCH_FILE).is_file() and run_dir.name == CONFIRM_DIR:
        search = run_dir.parent
    if search is None:
        return None, None, None, None
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
    return summary, candidates, found, search


# Axis labels of the costs a report draws against (every cost in millions, so its axis has no offset).
COSTS = {"effective_params": "effective parameters (M)", "weight_bytes": "weights (MB, 10\u2076 bytes)",
         "decode_latency": "decode latency (ms per token; bars: fastest to slowest round)"}


@dataclass
class _Context:
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


def _context(run_dir: Path, frame, run: dict, found_frame, search_summary, candidates, compare_frame,
             compare_label: str) -> _Context:
    import pandas as pd

    suite = run.get("identity", {}).get("suite", {})
    tasks = [(t["name"], t["metric"], t.get("higher_is_better", True)) for t in suite.get("tasks", [])] or \
        sorted({(task, metric, True) for task, metric in zip(frame["task"], frame["metric"])})
    own = frame if found_frame is None or found_frame.empty else pd.concat([frame, found_frame], ignore_index=True)
    own = own.drop_duplicates(["submodel_id", "task", "metric"]).reset_index(drop=True)
    configs = _per_config(own)
    compare_configs = _per_config(compare_frame) if compare_frame is not None else None
    context = _Context(
        run_dir, run, suite, published.run_suite(run), tasks, frame, own, configs,
        {entry["submodel_id"] for entry in search_summary["frontier"]} if search_summary else set(),
        {sid: str(number) for number, sid in enumerate(configs["submodel_id"], 1)}, compare_frame, compare_configs,
        {sid: f"C{number}" for number, sid in enumerate(compare_configs["submodel_id"], 1)}
        if compare_configs is not None else {}, compare_label, search_summary, candidates, [], [], set())
    timings = {}
    for source, table in (("own", configs), ("compare", compare_configs)):
        for row in [] if table is None else table.to_dict("records"):
            latency = _latency(row, "decode_tokens_per_s")
            if latency:
                timings[(source, row["submodel_id"])] = pareto.Timing(
                    _name(context, source, row), int(row["kept_layers"]), int(row["weight_bytes"]), *latency)
    context.doubts = pareto.latency_doubts(list(timings.values()))
    context.unsteady = pareto.unsteady(list(timings.values()))
    # Ringed: configs whose own rounds disagree, and those of orders the rounds' spread cannot
    # explain (orders within it are noise, said but not ringed).
    places = {timing: place for place, timing in timings.items()}
    context.doubtful = {places[timing] for timing in context.unsteady} | \
        {places[timing] for *pair, overlap in context.doubts if not overlap for timing in pair}
    return context


def _name(context: _Context, source: str, row) -> str:
    return row["config"] if source == "own" else f"{row['config']} of {context.compare_label}"


def _rows_of(rows, task: str, metric: str):
    return rows[(rows["task"] == task) & (rows["metric"] == metric)]


def _mark(row, key: str, cost: str, doubtful: bool = False):
    from matlab.harness.plots import Mark

    score = _score(row)
    if cost == "decode_latency":
        latency = _latency(row, "decode_tokens_per_s")
        x, spread = (latency[0], latency[1:]) if latency else (math.nan, None)
    else:
        x, spread = row[cost] / 1e6, None
    return Mark(key, float(x), score.value, score.stderr, spread, doubtful)


def _series(context: _Context, task: str, metric: str, cost: str, references: bool = False) -> list:
    """The plot's series: hand-written configs, found configs, the compared run, and (against
    effective parameters) the figures stated by the configs' source and published for the models."""
    from matlab.harness.plots import Mark, Series

    rows = _rows_of(context.own, task, metric).sort_values("effective_params")
    series = []
    for kind, label in (("configs", "hand-written configs" if context.found_ids else "configs"),
                        ("found", "found by search")):
        marks = [_mark(row, context.keys[row["submodel_id"]], cost, context.doubted(cost, "own", row))
                 for _, row in rows.iterrows() if context.kind(row["submodel_id"]) == kind]
        if marks:
            series.append(Series(label, kind, marks))
    if context.compare is not None:
        other = _rows_of(context.compare, task, metric)
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


def _log_scale(values: list[float]) -> bool:
    """Whether scores span enough to need a log axis: positive, not fractions, and a factor of 5
    or more apart (one perplexity of 200 would flatten the others' 4 to 13 on a linear one)."""
    finite = [value for value in values if math.isfinite(value)]
    return bool(finite) and min(finite) > 0 and max(finite) > 1 and max(finite) / min(finite) >= 5


def _measured(context: _Context, rows, source: str = "own") -> list[pareto.Measured]:
    return [pareto.Measured(_name(context, source, row), row["effective_params"] / 1e6, score.value, score.stderr)
            for _, row in rows.iterrows() for score in [_score(row)] if math.isfinite(score.value)]


def _plot_title(scores: list[Score], noisy: tuple[int, int]) -> str:
    documents = _documents(scores)
    if any(score.estimated for score in scores):
        bars = "bars: \u00b11 binomial stderr (lm-eval gives none under --limit)"
    elif any(score.stderr is not None for score in scores):
        bars = "bars: \u00b11 stderr"
    else:
        bars = "no stderr for this metric"
    title = (f"each score rests on {documents} documents; " if documents else "") + bars
    steps, known = noisy
    return title + (f"; {steps} of {known} frontier steps are within noise" if steps else "")


def _key(context: _Context, series_list: list) -> str:
    """Which number is which config, for the points of one plot."""
    keyed = {mark.key for series in series_list if series.kind in ("configs", "found", "compare")
             for mark in series.marks}
    names = [(context.keys[sid], name) for sid, name in zip(context.configs["submodel_id"], context.configs["config"])]
    if context.compare_configs is not None:
        names += [(context.compare_keys[sid], f"{name} of {context.compare_label}")
                  for sid, name in zip(context.compare_configs["submodel_id"], context.compare_configs["config"])]
    return " \u00b7 ".join(f"{key} {name}" for key, name in names if key in keyed)


def _score_plots(context: _Context) -> list[Plot]:
    from matlab.harness import plots

    figures = []
    for task, metric, higher in context.tasks:
        rows = _rows_of(context.own, task, metric)
        if rows.empty:
            continue
        series = _series(context, task, metric, "effective_params", references=True)
        scores = [_score(row) for _, row in rows.iterrows()]
        budget = context.budget("effective_params") if context.found_ids else None
        log_score = _log_scale([m.score for s in series for m in s.marks])
        svg = plots.tradeoff_plot(series, cost_label=COSTS["effective_params"],
                                  score_label=_score_label(metric) + (" (log scale)" if log_score else ""),
                                  title=_plot_title(scores, pareto.noisy_steps(_measured(context, rows), higher)),
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


def _score_label(metric: str) -> str:
    return f"{metric} (fraction)" if metric in BINARY_METRICS or metric in ("f1", "em") else metric


def _cost_plots(context: _Context) -> list[Plot]:
    from matlab.harness import plots

    task, metric, higher = context.primary
    rows = _rows_of(context.own, task, metric)
    scores = [_score(row) for _, row in rows.iterrows()]
    figures = []
    for cost, note in (("weight_bytes", "Bytes of the weights each slice holds (a deployed copy's size)."),
                       ("decode_latency", _latency_note(context))):
        series = _series(context, task, metric, cost)
        # Latencies a busy machine stretched over decades get a log axis, as scores do.
        svg = plots.tradeoff_plot(series, cost_label=COSTS[cost], score_label=_score_label(metric),
                                  title=_plot_title(scores, (0, 0)), higher_is_better=higher,
                                  budget=context.budget(cost) if context.found_ids else None,
                                  log_score=_log_scale([m.score for s in series for m in s.marks]),
                                  log_cost=cost == "decode_latency" and _log_scale([m.cost for s in series
                                                                                    for m in s.marks]))
        figures.append(_plot(f"{task} ({metric}) against {COSTS[cost].split(' (')[0]}", svg,
                             "Red line: the Pareto frontier on this cost. " + note, _key(context, series)))
    return figures


def _latency_note(context: _Context) -> str:
    first = context.frame.iloc[0]
    rounds, threads = _stated(first.get("latency_rounds")), _stated(first.get("latency_threads"))
    how = f"the median of {int(rounds)} round-robin rounds over all configs, {int(threads)} threads, " \
        if rounds is not None and threads is not None else ""
    place = _stated(first.get("latency_measured_on"))
    where = f" ({place})" if place and place != SERIAL_LATENCY else ""
    device = _stated(first.get("latency_device")) or first["device"]
    apart = [what for what, present in (("the found configs in the search's confirm run",
                                         len(context.own) > len(context.frame)),
                                        (context.compare_label, context.compare is not None)) if present]
    note = (f"Latency: {how}on {device}{where} in {first['dtype']}; bars span each config's fastest to slowest round."
            + (f" Timed in runs of their own: {' and '.join(apart)}; configs timed apart compare less well than "
               "configs timed together." if apart else ""))
    return " ".join([note, *_latency_sentences(context)])


def _latency_sentences(context: _Context) -> list[str]:
    """What the rounds say about the latencies: configs whose own rounds disagree, and larger
    configs timed faster than smaller ones (beyond the rounds' spread, or within it)."""
    sentences = []
    if context.unsteady:
        worst, count = context.unsteady[0], len(context.unsteady)
        whose = "configs'" if count > 1 else "config's"
        sentences.append(
            f"{count} {whose} rounds disagree by more than "
            f"{pareto.UNSTEADY_RATIO:g} times (the worst, {worst.name}: {worst.fastest:.1f} to {worst.slowest:.1f} ms "
            "per token): the machine was busy during some rounds, so those medians are not the configs' latency; "
            "ringed on the latency plot.")
    if context.doubts:
        larger, smaller, overlap = context.doubts[0]
        sentence = (f"{larger.name} ({larger.layers} layers, {larger.weight_bytes / 1e6:.1f} MB) measured faster "
                    f"than {smaller.name} ({smaller.layers} layers, {smaller.weight_bytes / 1e6:.1f} MB), "
                    f"{larger.median:.1f} against {smaller.median:.1f} ms per token, though it does more work: ")
        sentence += "their rounds overlap, so the order is noise" if overlap else (
            "their rounds disagree by more than their own spread (a busy machine); both ringed")
        beyond = sum(not overlap for *_, overlap in context.doubts[1:])
        within = len(context.doubts) - 1 - beyond
        more = [f"{beyond} beyond the rounds' spread" if beyond else "", f"{within} within it" if within else ""]
        said = " and ".join(part for part in more if part)
        sentences.append(sentence + (f" ({len(context.doubts) - 1} more such pairs: {said})." if said else "."))
    if sentences:
        sentences.append("Measure latency again on an idle machine, with more --latency-rounds.")
    return sentences


def _search_plot(context: _Context) -> Plot | None:
    from matlab.harness import plots

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
                            budget=context.budget(cost), log_objective=objective == "kl" or _log_scale(values))
    keys = {mark.key for mark in found}
    key = " \u00b7 ".join(f"{context.keys[sid]} {name}" for sid, name in
                          zip(context.configs["submodel_id"], context.configs["config"]) if context.keys[sid] in keys)
    return _plot(f"The search: {len(candidates)} candidates' {objective} against {COSTS[cost].split(' (')[0]}", svg,
                 "Each point is one evaluated submodel (an elastic view of the full model), measured on calibration "
                 "text; stars: the Pareto set within the budget, written as slice configs and numbered as in the "
                 "results table.", key)


def _heatmap(context: _Context) -> Plot:
    from matlab.harness import plots

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


def _said(point: pareto.Measured) -> str:
    return format_score(Score(point.score, point.stderr, None, False))


def _conclusions(context: _Context) -> list[str]:
    """What the data says, computed from it: cliffs along each frontier, the cheapest config
    within noise of the costliest, frontier steps that are noise, the compared run's configs
    against this run's, and latencies whose order is in doubt."""
    lines = []
    limit = context.run.get("identity", {}).get("limit")
    for task, metric, higher in context.tasks:
        rows = _rows_of(context.own, task, metric)
        points, label = _measured(context, rows), f"{task} {metric}"
        step = pareto.cliff(points, higher, _log_scale([point.score for point in points]))
        if step:
            low, high = step
            budget = context.budget("effective_params") if context.found_ids else None
            on_cliff = budget is not None and low.cost <= budget < high.cost
            lines.append(f"{label}: {low.name} ({low.cost:.2f}M parameters) keeps {_said(low)} where {high.name} "
                         f"({high.cost:.2f}M) keeps {_said(high)}, the frontier's largest step, for "
                         f"{100 * (high.cost / low.cost - 1):.0f}% more parameters"
                         + (f"; the search's budget ({budget:.2f}M) sits on this cliff." if on_cliff else "."))
        pair = pareto.cheapest_equivalent(points, higher)
        if pair:
            costly, cheap = pair
            if pareto.within_noise(cheap, costly):
                difference = abs(cheap.score - costly.score)
                said = f"both {_said(cheap)}" if difference == 0 else (
                    f"{_said(cheap)} against {_said(costly)}; the difference, {difference:.2g}, is within their "
                    f"combined stderr, {pareto.combined_stderr(cheap, costly):.2g}")
                lines.append(f"{label}: {cheap.name} ({cheap.cost:.2f}M) and {costly.name} ({costly.cost:.2f}M) are "
                             f"within noise ({said}): {costly.cost / cheap.cost:.1f} times the parameters buy "
                             "nothing measurable.")
            else:
                lines.append(f"{label}: {cheap.name} ({cheap.cost:.2f}M) scores better than {costly.name} "
                             f"({costly.cost:.2f}M): {_said(cheap)} against {_said(costly)}.")
        steps, known = pareto.noisy_steps(points, higher)
        if steps:
            documents = _documents([_score(row) for _, row in rows.iterrows()])
            lines.append(f"{label}: {steps} of the {known} steps along the frontier are within their combined stderr, "
                         "so the frontier's order there is chance"
                         + (f" (each score rests on {documents} documents under --limit {limit}; more documents "
                            "would resolve it)." if limit else "."))
    lines += _compare_conclusions(context)
    latency = _latency_sentences(context)
    if latency:
        lines.append("Latency: " + " ".join(latency))
    return lines


def _compare_conclusions(context: _Context) -> list[str]:
    """Each config of the compared run against the run's config of the same name, on the primary task."""
    if context.compare is None:
        return []
    task, metric, _ = context.primary
    own = _rows_of(context.frame, task, metric)
    lines = []
    for _, row in _rows_of(context.compare, task, metric).iterrows():
        ours = _measured(context, own[own["config"] == row["config"]])
        if not ours or not math.isfinite(row["value"]):
            continue
        ours, score = ours[0], _score(row)
        theirs = pareto.Measured(row["config"], row["effective_params"] / 1e6, score.value, score.stderr)
        if pareto.significant(ours, theirs) is None:
            verdict = " (no stderr to judge the difference)."
        elif pareto.significant(ours, theirs):
            verdict = ": a significant difference."
        elif pareto.within_noise(ours, theirs):
            verdict = ": within noise."
        else:
            verdict = ": a difference within twice their combined stderr (not significant)."
        lines.append(f"{task} {metric}: {row['config']} keeps {_said(ours)} sliced from this run's model and "
                     f"{_said(theirs)} from {context.compare_label}{verdict}")
    return lines


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


def _result_cells(context: _Context, config, rows, references: bool) -> list[str]:
    cells = []
    for task, metric, _ in context.tasks:
        match = rows[(rows["submodel_id"] == config["submodel_id"]) & (rows["task"] == task)
                     & (rows["metric"] == metric)]
        score = None if match.empty else _score(match.iloc[0])
        cells.append(_cell(score, _reference(context.suite_model, task, config) if references else None))
    peak = _stated(config.get("peak_memory_bytes"))
    return cells + [f"{config['effective_params'] / 1e6:.2f}", f"{config['weight_bytes'] / 1e6:.1f}",
                    "" if peak is None else f"{peak / 1e6:,.1f}", _latency_cell(config, "decode_tokens_per_s"),
                    _latency_cell(config, "prefill_tokens_per_s"),
                    _runtimes_cell(config.get("runs_in"), config.get("expected_in"))]


def _results_table(context: _Context) -> dict:
    headers = []
    for task, metric, _ in context.tasks:
        documents = _documents([_score(row) for _, row in _rows_of(context.own, task, metric).iterrows()])
        headers.append(f"{task} {metric}" + (f" (n={documents})" if documents else ""))
    headers += ["effective params (M)", "weights (MB)", "peak memory (MB)", "decode ms/token (range)",
                "prefill ms/token (range)", "runs in (measured; expected)"]
    task, metric, higher = context.primary
    primary = _rows_of(context.own, task, metric).reset_index(drop=True)
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


def _configs_table(context: _Context) -> dict:
    headers = ["file", "layers kept", "skipped", "FFN widths", "effective params", "PLE params", "weight bytes",
               "stated effective (B)", "stated MMLU"]
    rows = []
    for config in context.configs.to_dict("records"):
        widths = ", ".join(f"{w}x{n}" if n > 1 else str(w) for w, n in width_runs(config["ffn_widths"]))
        stated = [_stated(config.get(name)) for name in ("stated_effective_params_b", "stated_mmlu")]
        ple = _stated(config.get("ple_params"))
        rows.append({"key": context.keys[config["submodel_id"]], "config": config["config"], "cells": [
            shown_path(config.get("config_file") or "", context.run_dir), str(config["kept_layers"]),
            str(config["layers_skipped"]), widths, f"{config['effective_params']:,}",
            "" if ple is None else f"{int(ple):,}", f"{config['weight_bytes']:,}",
            *("" if value is None else str(value) for value in stated)]})
    return _drop_empty({"headers": headers, "classes": ["name", "", "name wrap", "name wrap", *[""] * 5],
                        "rows": rows})


def _runtimes_cell(measured: object, expected: object) -> str:
    """Measured runtimes, then the ones only expected from source, marked as such."""
    cell = ", ".join(measured) if isinstance(measured, list) else ""
    if isinstance(expected, list) and expected:
        cell += f" (expected, not measured: {', '.join(expected)})"
    return cell


def _provenance(context: _Context, search_dir: Path | None, compare: Path | None) -> list[tuple[str, object]]:
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


def build_report(run_dir: str | Path, out: str | Path, compare: str | Path | None = None,
                 compare_label: str = "compared run", force: bool = False, search: str | Path | None = None) -> Path:
    """Write `out/index.html` for the sweep in `run_dir` (optionally overlaying `compare`, and the
    configs a search found: `search`, or the search `run_dir` confirms)."""
    from jinja2 import Environment, select_autoescape

    run_dir, out = Path(run_dir), Path(out)
    frame, run = _load(run_dir)
    search_summary, candidates, found_frame, search_dir = _search_results(run_dir, Path(search) if search else None)
    compare_frame = _load(Path(compare))[0] if compare else None
    context = _context(run_dir, frame, run, found_frame, search_summary, candidates, compare_frame, compare_label)
    search_figure = _search_plot(context)
    figures = _score_plots(context) + _cost_plots(context) + ([search_figure] if search_figure else []) + \
        [_heatmap(context)]
    task, metric, _ = context.primary
    found, total = len(context.found_ids & set(context.configs["submodel_id"])), len(context.configs)
    summary = (f"{total} configs" + (f" ({total - found} written by hand, {found} found by `matformer search`)"
                                    if found else "")
               + (f", and {len(context.compare_configs)} of {compare_label}" if compare_frame is not None else "")
               + f"; {len(context.own)} result rows. The numbers on the plots are the rows of the results table. "
               "Every point is measured by MatFormer Lab; stated figures are shown only beside them.")
    environment = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    template = environment.from_string((resources.files("matlab") / "data" / "templates" / "report.html.j2")
                                       .read_text(encoding="utf-8"))
    html = template.render(
        title=f"MatFormer Lab sweep: {context.suite.get('name', '')} on "
              f"{Path(str(frame['checkpoint'].iloc[0])).name}",
        summary=summary, conclusions=_conclusions(context), plots=figures, primary=f"{task} {metric}",
        results=_results_table(context), configs=_configs_table(context), searched=search_summary is not None,
        compare_label=compare_label if compare_frame is not None else None,
        provenance=_provenance(context, search_dir, Path(compare) if compare else None),
        published_rows=published.comparison(context.suite_model, {
            (row_task, int(params)): float(value) for row_task, row_metric, params, value
            in zip(frame["task"], frame["metric"], frame["effective_params"], frame["value"])
            if (row_task, row_metric) in {(t, m) for t, m, _ in context.tasks}}),
        published_note=published.dtype_note(context.suite_model, str(frame["dtype"].iloc[0])))
    with staged_output(out, force, inputs=(run_dir, compare, search)) as temporary:
        (temporary / REPORT_NAME).write_text(html, encoding="utf-8")
    return out / REPORT_NAME
