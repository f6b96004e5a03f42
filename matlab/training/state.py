"""A training run's state, kept beside its output so that a killed run resumes with nothing lost.

`OUT.partial/run.json` records what the run is (its identity: checkpoint, data digest, slices,
every setting that changes the result); `OUT.partial/state.pt` the step reached, the adapter,
the optimizer's moments, the RNG and the loss curve, replaced whole (temporary file, fsync,
rename) every few steps. The same command finds the state and goes on from it; a directory
holding another run's state is refused unless `--force` starts over. The output itself is
published only when the run is complete (`staged_output`), and the state removed then.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from matlab import __version__
from matlab.errors import InputError
from matlab.harness.results import read_json_file, write_atomic
from matlab.io.lock import is_lock_file
from matlab.search.journal import changed_keys

RUN_FILE, STATE_FILE = "run.json", "state.pt"


def partial_directory(out: Path) -> Path:
    """Where the run for output `out` keeps its state while it runs."""
    return out.with_name(out.name + ".partial")


class RunState:
    """The state directory of one run, checked against the run's identity when opened."""

    def __init__(self, directory: Path, identity: dict[str, Any], arguments: dict[str, Any], force: bool):
        self.directory, self.identity = directory, identity
        previous = self._recorded()
        if previous is not None and changed_keys(previous, identity):
            if not force:
                raise InputError(f"{directory}: holds an interrupted run with different "
                                 f"{', '.join(changed_keys(previous, identity))}; run it again with its own "
                                 "arguments to resume it, or pass --force to start over")
            self.clear()
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / RUN_FILE, json.dumps({"tool": "matformer-lab", "tool_version": __version__,
                                                       "identity": identity, "arguments": arguments}, indent=2) + "\n")

    def _recorded(self) -> dict[str, Any] | None:
        if not self.directory.is_dir() or all(is_lock_file(entry.name) for entry in self.directory.iterdir()):
            return None
        fix = f"it records which run {self.directory} holds: remove {self.directory} to start over"
        if not (self.directory / RUN_FILE).is_file():
            raise InputError(f"{self.directory}: not empty and holds no {RUN_FILE}, so no run of this tool; "
                             "remove it or choose another --out")
        record = read_json_file(self.directory / RUN_FILE, fix)
        if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
            raise InputError(f"{self.directory / RUN_FILE}: has no run identity; {fix}")
        return record["identity"]

    def clear(self) -> None:
        """Forget the recorded run (its state and record; the lock stays with its holder)."""
        for name in (STATE_FILE, RUN_FILE):
            (self.directory / name).unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        """The last saved state, or None. Tensors and plain values only (`weights_only`)."""
        path = self.directory / STATE_FILE
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise InputError(f"{path}: cannot read the saved state ({type(error).__name__}); remove it to start "
                             "over, or pass --force") from None

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state whole: a kill during the write leaves the previous one."""
        handle, temporary = tempfile.mkstemp(prefix=f".{STATE_FILE}.", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(state, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.directory / STATE_FILE)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """The run is published: its state is no longer needed."""
        shutil.rmtree(self.directory, ignore_errors=True)
