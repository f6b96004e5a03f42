"""A search's run directory: what has been evaluated, written so that a kill loses nothing.

- `search.json`: the search's identity (checkpoint, budget, runtime, objective, calibration,
  widths, seed, dtype), its arguments and, when finished, the result. A directory holding
  another search's identity is refused, and so is a damaged one (one line naming the file).
- `candidates.jsonl`: every evaluated candidate, one JSON object per line, rewritten whole
  through a temporary file and a rename after each evaluation, so it is always complete
  (`read_journal` says what is done with one that is not).
- `frontier/*.yaml`: the Pareto set as slice configs, replaced as one directory at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from matlab import __version__
from matlab.errors import InputError, MatformerError
from matlab.io.lock import is_lock_file
from matlab.io.rundir import TORN_LINE, changed_keys, json_kind, jsonl_values, read_json_file, write_atomic
from matlab.io.staging import staged_output

SEARCH_FILE = "search.json"
CANDIDATES_FILE = "candidates.jsonl"
FRONTIER_DIR = "frontier"
CONFIRM_DIR = "confirm"


class SearchError(MatformerError):
    """The run directory holds something else, or the search cannot run as asked."""

    exit_code = 2


# What the search and the report read of every journal record.
RECORD_FIELDS = {"submodel_id": str, "layers_skipped": list, "ffn_widths": list, "effective_params": int,
                 "weight_bytes": int, "value": (int, float)}


def recorded_identity(directory: Path) -> dict[str, Any] | None:
    """The identity in `directory`'s search.json (None without one); a damaged search.json is an
    InputError naming it."""
    search_file = directory / SEARCH_FILE
    if not search_file.is_file():
        return None
    fix = f"it records which search {directory} holds: restore it, or choose another --out"
    summary = read_json_file(search_file, fix)
    identity = summary.get("identity") if isinstance(summary, dict) else None
    if not isinstance(identity, dict):
        what = "has no search identity" if isinstance(summary, dict) else f"holds {json_kind(summary)}, not an object"
        raise InputError(f"{search_file}: {what}; {fix}")
    return identity


def check_directory(directory: Path, identity: dict[str, Any]) -> None:
    """Refuse a directory that is not empty and not this same search (raises before anything is written)."""
    if directory.exists() and not directory.is_dir():
        raise SearchError(f"--out {directory}: exists and is not a directory; choose another --out")
    # The lock of the run holding the directory (this one) is not the search's content.
    if not directory.is_dir() or all(is_lock_file(entry.name) for entry in directory.iterdir()):
        return
    previous = recorded_identity(directory)
    if previous is None:
        raise SearchError(f"--out {directory}: not empty and holds no {SEARCH_FILE}; choose an empty or new --out")
    changed = changed_keys(previous, identity)
    if changed:
        raise SearchError(f"--out {directory}: holds a search with different {', '.join(changed)}; resume it with "
                          "the same arguments, or choose another --out")


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"{json_kind(record)}, not an object"
    wrong = [name for name, kind in RECORD_FIELDS.items()
             if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool)]
    return f"missing or wrong {', '.join(repr(name) for name in wrong)}" if wrong else None


def read_journal(path: Path, drop_torn: bool = True) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a candidates journal, and a line to show if its last line was torn and dropped.

    The journal is rewritten whole through a rename, so a kill never tears it; a last line cut
    short (no newline, not JSON) can still come from a disk filling up or a copy taken while an
    older version appended to it. That line holds one unfinished record: with `drop_torn` it is
    dropped and its candidate evaluated again (the search is deterministic, so nothing is lost),
    and the caller says so. Anything else that is not a record, anywhere, is an InputError
    naming the file and the line."""
    fix = "delete that line to evaluate its candidate again, or choose another --out"
    records, dropped = [], None
    try:
        for number, record in jsonl_values(path, fix, drop_torn=drop_torn):
            if record is TORN_LINE:
                dropped = f"{path}: dropped its last line ({number}), cut short; that candidate is evaluated again"
                break
            problem = _record_problem(record)
            if problem:
                raise InputError(f"{path}: line {number} is {problem} (not a candidate record); {fix}")
            records.append(record)
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror}); choose another --out") from None
    return records, dropped


class Journal:
    """The evaluated candidates of one search, by submodel identity."""

    def __init__(self, directory: Path, identity: dict[str, Any], arguments: dict[str, Any]):
        check_directory(directory, identity)
        self.directory = directory
        self.identity, self.arguments = identity, arguments
        directory.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        path = directory / CANDIDATES_FILE
        if path.is_file():
            self.records, dropped = read_journal(path)
            self.warnings += [dropped] if dropped else []
        self.by_id = {record["submodel_id"]: record for record in self.records}
        if not (directory / SEARCH_FILE).is_file():
            self.write_summary({"status": "running"})

    def record(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.by_id[record["submodel_id"]] = record
        write_atomic(self.directory / CANDIDATES_FILE,
                     "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in self.records))

    def write_summary(self, fields: dict[str, Any]) -> dict[str, Any]:
        summary = {"tool": "matformer-lab", "tool_version": __version__, "identity": self.identity,
                   "arguments": self.arguments, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        write_atomic(self.directory / SEARCH_FILE, json.dumps(summary, indent=2) + "\n")
        return summary

    def write_frontier(self, files: dict[str, str]) -> Path:
        """Replace `frontier/` with these files (name -> text), made visible in one rename."""
        target = self.directory / FRONTIER_DIR
        with staged_output(target, force=True, markers=("*.yaml",)) as staging:
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
        return target
