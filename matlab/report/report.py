"""Self-contained HTML reports of sweeps: plots embedded as SVG data, no external assets.

Every point of every plot carries the number of its row in the results table; scores carry
their standard error and how many documents they rest on; paths are shown relative to the run
directory (or by name), so a report can be committed or shared without naming the machine
that built it. This module reads the run (and the search and compared run) and renders the
page; what the page shows is computed in `report_context` (the rows every section reads),
`report_tables`, `report_plots` and `conclusions`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from matlab.errors import InputError, MatformerError
from matlab.harness import published
from matlab.harness.results import RESULTS_FILE, RUN_FILE, read_results
from matlab.io.rundir import json_kind, read_json_file
from matlab.io.staging import staged_output
from matlab.report.conclusions import computed_conclusions
from matlab.report.context import build_context
from matlab.report.figures import cost_figures, heatmap_figure, score_figures, search_figure
from matlab.report.tables import configs_table, provenance_rows, results_table

REPORT_NAME = "index.html"


class ReportError(MatformerError):
    """The run directory has no results to report."""


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
    """The run's result rows and run.json, refused where rows lack a field the report draws."""
    frame = read_results(run_dir)
    if frame.empty:
        raise ReportError(f"{run_dir}: no results.jsonl rows; run `matformer sweep ... --out {run_dir}` first")
    missing = [name for name in REPORT_FIELDS if name not in frame.columns or frame[name].isna().any()] + \
        [name for name in MEASURED_LATER if name not in frame.columns]
    if missing:
        raise ReportError(f"{run_dir / RESULTS_FILE}: rows without {', '.join(missing)}, which the report draws; "
                          f"delete it and run the sweep again with --out {run_dir} to rebuild it")
    return frame, _run_record(run_dir)


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


def build_report(run_dir: str | Path, out: str | Path, compare: str | Path | None = None,
                 compare_label: str = "compared run", force: bool = False, search: str | Path | None = None) -> Path:
    """Write `out/index.html` for the sweep in `run_dir` (optionally overlaying `compare`, and the
    configs a search found: `search`, or the search `run_dir` confirms)."""
    from jinja2 import Environment, select_autoescape

    run_dir, out = Path(run_dir), Path(out)
    frame, run = _load(run_dir)
    search_summary, candidates, found_frame, search_dir = _search_results(run_dir, Path(search) if search else None)
    compare_frame = _load(Path(compare))[0] if compare else None
    context = build_context(run_dir, frame, run, found_frame, search_summary, candidates, compare_frame, compare_label)
    search_plot = search_figure(context)
    figures = score_figures(context) + cost_figures(context) + ([search_plot] if search_plot else []) + \
        [heatmap_figure(context)]
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
        summary=summary, conclusions=computed_conclusions(context), plots=figures, primary=f"{task} {metric}",
        results=results_table(context), configs=configs_table(context), searched=search_summary is not None,
        compare_label=compare_label if compare_frame is not None else None,
        provenance=provenance_rows(context, search_dir, Path(compare) if compare else None),
        published_rows=published.comparison(context.suite_model, {
            (row_task, int(params)): float(value) for row_task, row_metric, params, value
            in zip(frame["task"], frame["metric"], frame["effective_params"], frame["value"])
            if (row_task, row_metric) in {(t, m) for t, m, _ in context.tasks}}),
        published_note=published.dtype_note(context.suite_model, str(frame["dtype"].iloc[0])))
    with staged_output(out, force, inputs=(run_dir, compare, search)) as temporary:
        (temporary / REPORT_NAME).write_text(html, encoding="utf-8")
    return out / REPORT_NAME
