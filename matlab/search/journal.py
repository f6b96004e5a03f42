"""A search's run directory: what has been evaluated, written so that a kill loses nothing.

- `search.json`: the search's identity (checkpoint, budget, runtime, objective, calibration,
  widths, seed, dtype), its arguments and, when finished, the result. A directory holding
  another search's identity is refused.
- `candidates.jsonl`: every evaluated candidate, one JSON object per line, rewritten whole
  through a temporary file and a rename after each evaluation, so it is always complete.
- `frontier/*.yaml`: the Pareto set as slice configs, replaced as one directory at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from matlab import __version__
from matlab.errors import MatformerError
from matlab.harness.results import write_atomic
from matlab.io.staging import staged_output

SEARCH_FILE = "search.json"
CANDIDATES_FILE = "candidates.jsonl"
FRONTIER_DIR = "frontier"
CONFIRM_DIR = "confirm"


class SearchError(MatformerError):
    """The run directory holds something else, or the search cannot run as asked."""

    exit_code = 2


def check_directory(directory: Path, identity: dict[str, Any]) -> None:
    """Refuse a directory that is not empty and not this same search (raises before anything is written)."""
    if directory.exists() and not directory.is_dir():
        raise SearchError(f"--out {directory}: exists and is not a directory; choose another --out")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    identity = json.loads(json.dumps(identity))  # as it reads back from search.json (tuples as lists)
    search_file = directory / SEARCH_FILE
    if not search_file.is_file():
        raise SearchError(f"--out {directory}: not empty and holds no {SEARCH_FILE}; choose an empty or new --out")
    previous = json.loads(search_file.read_text(encoding="utf-8")).get("identity", {})
    changed = sorted(key for key in set(identity) | set(previous) if previous.get(key) != identity.get(key))
    if changed:
        raise SearchError(f"--out {directory}: holds a search with different {', '.join(changed)}; resume it with "
                          "the same arguments, or choose another --out")


class Journal:
    """The evaluated candidates of one search, by submodel identity."""

    def __init__(self, directory: Path, identity: dict[str, Any], arguments: dict[str, Any]):
        check_directory(directory, identity)
        self.directory = directory
        self.identity, self.arguments = identity, arguments
        directory.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        path = directory / CANDIDATES_FILE
        if path.is_file():
            self.records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
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
        with staged_output(target, force=True) as staging:
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
        return target
