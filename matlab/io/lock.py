"""A run directory's lock: one sweep or search at a time writes into a `--out`.

The lock is a file, `DIR/.lock`, created with O_CREAT | O_EXCL (so that of two processes
exactly one creates it) and holding its owner's pid, host and process start time. It is
removed when the run ends, however it ends. A lock whose owner is gone (a killed run: its pid
no longer runs on this host, or now belongs to another process) is taken over, and the caller
is told so; a live one is refused with its pid and host. A lock from another host cannot be
checked and is always refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from matlab.errors import InputError

LOCK_FILE = ".lock"
PROGRAM = "matformer"
# A lock that has no owner written into it is being created (its owner writes at once after
# creating it), or was left by a process killed in between: after this long it is the latter.
UNREADABLE_GRACE_S = 1.0
_HELD: set[str] = set()  # lock files this process holds, so that it never takes over its own


@dataclass(frozen=True)
class RunLock:
    path: Path
    took_over: str | None = None  # a line for the user: whose stale lock this run replaced


def is_lock_file(name: str) -> bool:
    """Whether a file name in a run directory belongs to its lock (not to the run's results)."""
    return name == LOCK_FILE or name.startswith(f"{LOCK_FILE}.")


def _process_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from Linux's /proc; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ", which the name may not break
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _owner_record() -> bytes:
    start = _process_start(os.getpid())
    return (json.dumps({"program": PROGRAM, "pid": os.getpid(), "host": socket.gethostname(),
                        "process_start": start[1] if start else None,
                        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n").encode()


def _owner(content: bytes) -> dict | None:
    try:
        owner = json.loads(content)
    except ValueError:
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int) or owner["pid"] <= 0 \
            or not isinstance(owner.get("host"), str):
        return None
    return owner


def _why_stale(owner: dict, path: Path) -> str | None:
    """Why the owner of a lock is gone, or None while it may still run."""
    pid = owner["pid"]
    if owner["host"] != socket.gethostname():
        return None
    if pid == os.getpid():  # a run before this one with the same pid (containers reuse low pids)
        return None if os.path.abspath(path) in _HELD else "no longer running"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "no longer running"
    except PermissionError:  # alive, another user's
        pass
    process = _process_start(pid)
    if process and process[0] == "Z":
        return "no longer running"
    if process and owner.get("process_start") not in (None, process[1]):
        return f"pid {pid} is now another process"
    return None


def _remove_if_unchanged(path: Path, seen: bytes) -> bool:
    """Remove the lock file if it still holds `seen`. Renamed aside first, so that of two
    processes taking over the same stale lock only one removes it, never the lock the other
    has just made."""
    aside = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        if aside.read_bytes() == seen:
            return True
        try:  # another process's fresh lock: put it back
            os.link(aside, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this filesystem
            os.replace(aside, path)
        return False
    finally:
        aside.unlink(missing_ok=True)


def _acquire(directory: Path, path: Path, record: bytes) -> str | None:
    """Create the lock file; returns a line saying whose stale lock was taken over, if any."""
    took_over = None
    unreadable_since = None
    for _ in range(100):  # each round either creates the lock, refuses, or removes a stale one
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        except FileNotFoundError:  # removed, empty, by a run that has just ended: make it again
            directory.mkdir(parents=True, exist_ok=True)
            continue
        else:
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(record)
            except BaseException:  # a full disk: leave no empty lock behind
                path.unlink(missing_ok=True)
                raise
            return took_over
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            continue
        owner = _owner(content)
        if owner is None:
            unreadable_since = unreadable_since or time.monotonic()
            if time.monotonic() - unreadable_since < UNREADABLE_GRACE_S:
                time.sleep(0.05)
                continue
            reason = f"{path}: took over an unreadable lock (its owner was killed while taking it)"
        else:
            why = _why_stale(owner, path)
            if why is None:
                elsewhere = "" if owner["host"] == socket.gethostname() else \
                    f" (if nothing runs there, delete {path})"
                raise InputError(f"{directory} is in use by {PROGRAM} (pid {owner['pid']} on {owner['host']}); wait "
                                 f"for it to finish, or choose another --out{elsewhere}")
            reason = f"{path}: took over the lock of a run that was killed (pid {owner['pid']} on " \
                     f"{owner['host']}, {why})"
        if _remove_if_unchanged(path, content):
            took_over = reason
        unreadable_since = None
    raise InputError(f"{directory}: cannot take its lock {path} (other processes keep replacing it); wait for them "
                     "to finish, or choose another --out")


def _make_directory(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; returns those this call created, outermost first."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} exists and is not a directory; choose another --out")
    missing = [folder for folder in (directory, *directory.parents) if not folder.exists()][::-1]
    created = []
    for folder in missing:
        try:
            folder.mkdir()
        except FileExistsError:  # made by another process meanwhile: not ours to remove
            continue
        except OSError as error:
            raise InputError(f"{directory}: cannot create it ({error.strerror}); choose another --out") from None
        created.append(folder)
    return created


@contextmanager
def run_directory_lock(directory: Path) -> Iterator[RunLock]:
    """Hold `directory`'s lock for the block (the directory is created if missing, and removed
    again afterwards if the block left it empty). Raises InputError if another live run holds it."""
    directory = Path(directory)
    created = _make_directory(directory)
    path = directory / LOCK_FILE
    record = _owner_record()
    try:
        took_over = _acquire(directory, path, record)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD.add(os.path.abspath(path))
    try:
        yield RunLock(path, took_over)
    finally:
        _HELD.discard(os.path.abspath(path))
        with contextlib.suppress(OSError):
            if path.read_bytes() == record:  # still ours: never remove a lock another run has taken over
                path.unlink()
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories the lock created, innermost first, as long as nothing was written in them."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return
