"""Sweep results on disk: one file per finished config, and a results.jsonl pandas reads.

Each config's rows are written to `configs/<stem>.json` through a temporary file and a
rename, so a config is either wholly recorded or not at all; `results.jsonl` is then rebuilt
from those files the same way. A sweep killed at any moment resumes from the files present,
without losing or duplicating rows.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def config_result_path(run_dir: Path, key: str) -> Path:
    return run_dir / CONFIGS_DIR / f"{key}.json"


def finished_keys(run_dir: Path) -> set[str]:
    directory = run_dir / CONFIGS_DIR
    return {path.stem for path in directory.glob("*.json")} if directory.is_dir() else set()


def recorded_rows(run_dir: Path, key: str) -> list[dict[str, Any]]:
    return json.loads(config_result_path(run_dir, key).read_text(encoding="utf-8"))


def record_config(run_dir: Path, key: str, rows: list[dict[str, Any]]) -> None:
    """Record one finished config, then rebuild results.jsonl from every recorded config."""
    write_atomic(config_result_path(run_dir, key), json.dumps(rows, indent=1) + "\n")
    all_rows = [row for path in sorted((run_dir / CONFIGS_DIR).glob("*.json"))
                for row in json.loads(path.read_text(encoding="utf-8"))]
    write_atomic(run_dir / RESULTS_FILE, "".join(json.dumps(row, sort_keys=True) + "\n" for row in all_rows))


def read_results(run_dir: str | Path):
    """All rows of a sweep as a pandas DataFrame."""
    import pandas as pd

    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True)
