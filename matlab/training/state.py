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
import math
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from matlab import __version__
from matlab.errors import InputError, shown_value
from matlab.io.lock import is_lock_file
from matlab.io.rundir import changed_keys, read_json_file, write_atomic

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

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self, steps: int, adapter: dict[str, torch.Tensor]) -> dict[str, Any] | None:
        """The last saved state, or None; checked as strictly as a config against the run it
        resumes (`steps`, the `adapter` being trained): tensors and plain values only
        (`weights_only`), every field of its type, range and shape."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
            raise InputError(f"{self.path}: cannot read the saved state ({type(error).__name__}); remove it to "
                             "start over, or pass --force") from None
        check_state(state, self.path, steps, adapter)
        return state

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


STATE_FIELDS = ("step", "adapter", "optimizer", "rng", "curve")


def _refuse(path: Path, field: str, what: str) -> InputError:
    return InputError(f"{path}: '{field}' {what}; this is not a state this tool saved: remove {path.parent} to "
                      "start over, or pass --force")


def _check_tensor(path: Path, field: str, name: object, value: object, shape: tuple[int, ...]) -> None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != shape:
        found = list(value.shape) if isinstance(value, torch.Tensor) else shown_value(value)
        raise _refuse(path, field, f"holds {shown_value(name)} as {found}, not a float tensor of shape {list(shape)}")
    if not torch.isfinite(value).all():
        raise _refuse(path, field, f"holds {shown_value(name)} with values that are not finite")


def check_state(state: object, path: Path, steps: int, adapter: dict[str, torch.Tensor]) -> None:
    """Refuse a saved state that this run cannot have saved: InputError naming the field."""
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds {shown_value(state)}, not a saved run state; remove {path.parent} to start "
                         "over, or pass --force")
    for name in STATE_FIELDS:
        if name not in state:
            raise _refuse(path, name, "is missing")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 < step < steps:
        raise _refuse(path, "step", f"is {shown_value(step)}, not a step between 1 and {steps - 1} (the run has "
                                    f"{steps} steps)")
    saved = state["adapter"]
    if not isinstance(saved, dict) or set(saved) != set(adapter):
        raise _refuse(path, "adapter", "does not name the tensors of this run's adapter")
    for name, parameter in adapter.items():
        _check_tensor(path, "adapter", name, saved[name], tuple(parameter.shape))
    _check_optimizer(path, state["optimizer"], [tuple(parameter.shape) for parameter in adapter.values()])
    rng = state["rng"]
    expected = torch.get_rng_state()
    if not isinstance(rng, torch.Tensor) or rng.dtype != expected.dtype or rng.shape != expected.shape:
        raise _refuse(path, "rng", "is not the state of torch's random number generator")
    _check_curve(path, state["curve"], step)


def _check_optimizer(path: Path, optimizer: object, shapes: list[tuple[int, ...]]) -> None:
    """AdamW's state dict: one group over the adapter's tensors, moments of their shapes."""
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list) or len(optimizer["param_groups"]) != 1:
        raise _refuse(path, "optimizer", "is not AdamW's state with one group of parameters")
    group = optimizer["param_groups"][0]
    if not isinstance(group, dict) or group.get("params") != list(range(len(shapes))):
        raise _refuse(path, "optimizer", f"does not hold the {len(shapes)} tensors of this run's adapter")
    if not optimizer["state"]:
        raise _refuse(path, "optimizer", "holds no moments, though steps were taken")
    for index, moments in optimizer["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(shapes) or not isinstance(moments, dict):
            raise _refuse(path, "optimizer", f"has state for {shown_value(index)}, no tensor of this adapter")
        for key in ("exp_avg", "exp_avg_sq"):
            _check_tensor(path, "optimizer", f"{key} of tensor {index}", moments.get(key), shapes[index])
        count = moments.get("step")
        if not isinstance(count, torch.Tensor) or count.numel() != 1 or not math.isfinite(float(count)):
            raise _refuse(path, "optimizer", f"has no step count for tensor {index}")


def _check_curve(path: Path, curve: object, step: int) -> None:
    """One record per step taken: step, slice, loss and seconds."""
    if not isinstance(curve, list) or len(curve) != step:
        raise _refuse(path, "curve", f"is not a list of the {step} steps taken")
    for record in curve:
        if not (isinstance(record, dict) and isinstance(record.get("step"), int)
                and isinstance(record.get("slice"), str)
                and all(isinstance(record.get(key), (int, float)) for key in ("loss", "seconds"))):
            raise _refuse(path, "curve", f"holds {shown_value(record)}, not a step's record")
