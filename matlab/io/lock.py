"""A run directory's lock: one sweep or search at a time writes into a `--out`.

The lock is `DIR/.lock`, held with `flock`: the kernel releases it when its owner ends, however
it ends (a kill, a crash), and across PID namespaces (containers sharing a host and a
filesystem), so a live run is never mistaken for a dead one by its pid. The file holds its
owner's pid and host for the message a second run gets; a file left by a killed run is not
locked by anyone and is taken over, and the caller is told whose it was. A record from another
host is refused: whether its lock reaches here depends on the filesystem.
"""

from __future__ import annotations

import contextlib
import fcntl
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


@dataclass(frozen=True)
class RunLock:
    path: Path
    took_over: str | None = None  # a line for the user: whose stale lock this run replaced


def is_lock_file(name: str) -> bool:
    """Whether a file name in a run directory belongs to its lock (not to the run's results)."""
    return name == LOCK_FILE or name.startswith(f"{LOCK_FILE}.")


def _owner_record() -> bytes:
    return (json.dumps({"program": PROGRAM, "pid": os.getpid(), "host": socket.gethostname(),
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


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _took_over(path: Path, previous: bytes) -> str | None:
    """What to tell the user about the unlocked lock file a killed run left."""
    owner = _owner(previous)
    if owner is None:
        return f"{path}: took over an unreadable lock (its owner was killed while taking it)"
    # Nobody holds the lock, so its owner is gone; its pid may have been given to another process since.
    why = f"pid {owner['pid']} is now another process" if owner["pid"] != os.getpid() and \
        _pid_exists(owner["pid"]) else "no longer running"
    return f"{path}: took over the lock of a run that was killed (pid {owner['pid']} on {owner['host']}, {why})"


def _in_use(directory: Path, path: Path, content: bytes) -> InputError:
    owner = _owner(content) or {"pid": "?", "host": "this host"}
    elsewhere = "" if owner["host"] in (socket.gethostname(), "this host") else \
        f" (if nothing runs there, delete {path})"
    return InputError(f"{directory} is in use by {PROGRAM} (pid {owner['pid']} on {owner['host']}); wait for it to "
                      f"finish, or choose another --out{elsewhere}")


def _acquire(directory: Path, path: Path, record: bytes) -> tuple[int, str | None]:
    """Open and lock the lock file; returns its descriptor and a line saying whose stale lock
    was taken over, if any. Raises InputError while another run holds it."""
    for _ in range(100):  # a round fails only when the holder removes the file under us
        try:
            handle, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                handle, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed by its owner on the way out: make it again
                continue
        except FileNotFoundError:  # the directory, made empty, was removed by a run that has just ended
            directory.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.pread(handle, 4096, 0)
            os.close(handle)
            raise _in_use(directory, path, content) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != os.fstat(handle).st_ino:  # released and removed meanwhile
            os.close(handle)
            continue
        try:
            previous = os.pread(handle, 4096, 0)
            owner = _owner(previous)
            if owner is not None and owner["host"] != socket.gethostname():
                raise _in_use(directory, path, previous)
            os.ftruncate(handle, 0)
            os.pwrite(handle, record, 0)
        except BaseException:
            os.close(handle)
            raise
        return handle, None if created else _took_over(path, previous)
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
    try:
        handle, took_over = _acquire(directory, path, _owner_record())
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield RunLock(path, took_over)
    finally:
        # Removed while still locked, so a run that opens the path afterwards makes a new file;
        # one that opened the old file meanwhile finds it gone once it gets the lock, and retries.
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(handle)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories the lock created, innermost first, as long as nothing was written in them."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return
