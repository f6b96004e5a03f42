"""Sweep results on disk: one file per finished config, and a results.jsonl pandas reads.

Each config's rows are written to `configs/<stem>.json` through a temporary file and a
rename, so a config is either wholly recorded or not at all; `results.jsonl` is then rebuilt
from those files the same way. A sweep killed at any moment resumes from the files present,
without losing or duplicating rows. Files damaged by anything else are refused with one line
naming the file (and line) and what to do, never read as if they were results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matlab.errors import InputError, shown_value
from matlab.io.rundir import json_kind, jsonl_values, read_json_file, write_atomic

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
CONFIGS_DIR = "configs"
# A row's `latency_measured_on` when the process that wrote the run measured its throughput;
# a distributed sweep names the Ray worker and its host instead (`matlab.harness.sweep`).
SERIAL_LATENCY = "this process"
# The fields of a row that depend on when and where it was measured, not on the model: two runs
# of the same sweep (serial, or on any number of workers) agree on every other field.
TIMING_FIELDS = ("seconds", "prefill_tokens_per_s", "prefill_tokens_per_s_min", "prefill_tokens_per_s_max",
                 "decode_tokens_per_s", "decode_tokens_per_s_min", "decode_tokens_per_s_max", "latency_threads",
                 "latency_measured_on")
# Fields every result row has; the sweep and the report read them.
ROW_FIELDS = ("config", "submodel_id", "task", "metric", "value")
# What each field the report computes with must hold: checked in every row that has it, so a
# damaged file is refused naming the field, not read into pandas and failing in a plot.
FIELD_KINDS = {"config": "string", "submodel_id": "string", "task": "string", "metric": "string",
               "value": "number", "effective_params": "integer", "weight_bytes": "integer"}
# pandas reads JSON integers as 64-bit ("Value is too big!" past that).
_INT64 = (-(1 << 63), 1 << 63)


def _wrong_kind(name: str, value: Any, kind: str) -> str | None:
    """Why `value` cannot be field `name` of a row that must hold a `kind`, or None."""
    if kind == "string":
        if isinstance(value, str):
            return None
    elif isinstance(value, float) and kind == "number":  # NaN included: a metric lm-eval gave as NaN is written so
        return None
    elif isinstance(value, int) and not isinstance(value, bool):
        if _INT64[0] <= value < _INT64[1]:
            return None
        return f"has a number too large for {name!r} (past 64 bits)"
    what = shown_value(value) if isinstance(value, float) else json_kind(value)
    return f"has {what} for {name!r}, not {'an' if kind == 'integer' else 'a'} {kind}"


def _row_problem(row: Any, fields: tuple[str, ...]) -> str | None:
    """What keeps `row` from being a result row ("is ..." or "has ..."), or None."""
    if not isinstance(row, dict):
        return f"is {json_kind(row)}, not an object"
    missing = [name for name in fields if name not in row]
    if missing:
        return f"is missing {', '.join(repr(name) for name in missing)}"
    for name, kind in FIELD_KINDS.items():
        problem = _wrong_kind(name, row[name], kind) if name in row else None
        if problem:
            return problem
    return None


def config_result_path(run_dir: Path, key: str) -> Path:
    return run_dir / CONFIGS_DIR / f"{key}.json"


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory whose results cannot be rewritten in place (a folder where a file goes)."""
    for name, want_dir in ((CONFIGS_DIR, True), (RESULTS_FILE, False), (RUN_FILE, False)):
        path = run_dir / name
        if path.exists() and path.is_dir() != want_dir:
            raise InputError(f"{path}: a {'file' if want_dir else 'folder'} where the sweep keeps its "
                             f"{'results per config' if want_dir else name}; move it away, or choose another --out")


def finished_keys(run_dir: Path) -> set[str]:
    directory = run_dir / CONFIGS_DIR
    return {path.stem for path in directory.glob("*.json")} if directory.is_dir() else set()


def _rows_of(path: Path) -> list[dict[str, Any]]:
    fix = "delete it to re-run that config, or choose another --out"
    rows = read_json_file(path, fix)
    if not isinstance(rows, list) or not rows:
        what = "an empty list" if rows == [] else json_kind(rows)
        raise InputError(f"{path}: {what}, not the result rows of a config; {fix}")
    for number, row in enumerate(rows, 1):
        problem = _row_problem(row, ROW_FIELDS)
        if problem:
            raise InputError(f"{path}: row {number} {problem} (not a result row); {fix}")
    return rows


def recorded_rows(run_dir: Path, key: str) -> list[dict[str, Any]]:
    """The rows recorded for one config (checked: a damaged file is an InputError naming it)."""
    return _rows_of(config_result_path(run_dir, key))


def recorded_configs(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every recorded config's rows by key, each file checked, in file name order."""
    directory = run_dir / CONFIGS_DIR
    return {path.stem: _rows_of(path) for path in sorted(directory.glob("*.json"))} if directory.is_dir() else {}


def rebuild_results(run_dir: Path) -> None:
    """Write results.jsonl afresh from every recorded config."""
    all_rows = [row for rows in recorded_configs(run_dir).values() for row in rows]
    write_atomic(run_dir / RESULTS_FILE, "".join(json.dumps(row, sort_keys=True) + "\n" for row in all_rows))


def record_config(run_dir: Path, key: str, rows: list[dict[str, Any]]) -> None:
    """Record one finished config, then rebuild results.jsonl from every recorded config."""
    write_atomic(config_result_path(run_dir, key), json.dumps(rows, indent=1) + "\n")
    rebuild_results(run_dir)


def check_results_lines(path: Path, fields: tuple[str, ...] = ROW_FIELDS) -> None:
    """Refuse a results.jsonl with a line that is not a result row (a field missing, or holding
    what the report cannot compute with), naming the file, the line and the field."""
    fix = f"it is rebuilt from {path.parent / CONFIGS_DIR}: delete it and run the sweep again with --out {path.parent}"
    try:
        for number, row in jsonl_values(path, fix):
            problem = _row_problem(row, fields)
            if problem:
                raise InputError(f"{path}: line {number} {problem} (not a result row); {fix}")
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror}); {fix}") from None


def read_results(run_dir: str | Path):
    """All rows of a sweep as a pandas DataFrame."""
    import pandas as pd

    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    check_results_lines(path)  # one line naming the file and line, not pandas' "Expected object or value"
    return pd.read_json(path, lines=True)
