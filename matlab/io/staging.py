"""Atomic output directories: write beside the target, swap into place when complete.

An output is built in a temporary directory beside `out` whose name carries the host and pid
of the process that owns it, so that a later run can tell a killed run's leftovers (removed)
from another run's work in progress (left alone). A replace (`--force`) keeps the old output
in place until the new one is complete: on Linux the two directories are exchanged in one
atomic `renameat2(RENAME_EXCHANGE)`; elsewhere the old output is moved aside and moved back
if the new one cannot take its place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from matlab.errors import MatformerWarning, OutputExistsError

# What a directory `--force` may replace holds one of these (glob patterns): an output of this
# tool (a checkpoint, a report, a run), never an arbitrary folder such as a home directory.
OUTPUT_MARKERS = ("config.json", "model.safetensors.index.json", "model.safetensors", "index.html",
                  "run.json", "search.json")
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _staging_prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_apart(out: Path, inputs: Iterable[str | Path | None], option: str = "--out") -> None:
    """Refuse an `out` that is, contains or lies inside any of `inputs` (files or directories),
    compared by real path, so that replacing or writing `out` can never touch an input."""
    target = Path(os.path.realpath(out))
    for entry in inputs:
        if entry is None:
            continue
        source = Path(os.path.realpath(entry))
        if _inside(source, target):
            raise OutputExistsError(f"{option} {out} is or contains the input {entry}; writing there would replace "
                                    f"the input: choose an {option} outside it")
        if _inside(target, source) and source.is_dir():
            raise OutputExistsError(f"{option} {out} lies inside the input {entry}; choose an {option} outside it")


def check_output(out: Path, force: bool, inputs: Iterable[str | Path | None] = (),
                 markers: tuple[str, ...] = OUTPUT_MARKERS) -> None:
    """Refuse a non-empty `out` unless forced, an `out` that is a file, one that `force` would
    replace although it holds nothing matching `markers` (an output of this tool), and one
    that overlaps an input."""
    check_apart(out, inputs)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
    if not any(next(out.glob(marker), None) is not None for marker in markers):
        raise OutputExistsError(f"{out} is not empty and holds no checkpoint, report or run (none of "
                                f"{', '.join(markers)}); --force replaces only such outputs: remove it "
                                "yourself or choose another --out")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove the temporary directories beside `out` that killed runs on this host left;
    warn (MatformerWarning) about those whose owner cannot be told. Returns what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    host = _host_tag()
    owned = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-")
    for kind in ("tmp", "old"):
        for leftover in out.parent.glob(f"{_staging_prefix(out, kind)}*"):
            match = owned.match(leftover.name)
            if match and match["host"] == host and not _pid_alive(int(match["pid"])):
                shutil.rmtree(leftover, ignore_errors=True)
                removed.append(leftover)
            elif not match:
                warnings.warn(f"{leftover}: a temporary folder left by an earlier MatFormer Lab run that was killed; "
                              "remove it if no run is writing there", MatformerWarning, stacklevel=2)
    return removed


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where the platform or the
    filesystem cannot, so that the caller falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _publish(temporary: Path, out: Path) -> None:
    if not out.exists():
        os.rename(temporary, out)
        return
    # Replace only now that the new output is complete; the old one stays until the new one is in place.
    if _exchange(temporary, out):
        shutil.rmtree(temporary, ignore_errors=True)  # now holds the old output
        return
    retired = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out, 'old')}{_host_tag()}-{os.getpid()}-",
                                    dir=out.parent))
    os.rename(out, retired / out.name)
    try:
        os.rename(temporary, out)
    except BaseException:
        os.rename(retired / out.name, out)
        shutil.rmtree(retired, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def staged_output(out: Path, force: bool, inputs: Iterable[str | Path | None] = (),
                  markers: tuple[str, ...] = OUTPUT_MARKERS) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it becomes `out`, on any
    failure (an exception or KeyboardInterrupt) it is removed and `out` is untouched.
    `inputs` are the files and folders the work reads: `out` may not overlap any of them;
    `markers` say what an earlier output that `force` may replace holds."""
    check_output(out, force, inputs, markers)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out)
    temporary = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out, 'tmp')}{_host_tag()}-{os.getpid()}-",
                                      dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output should not be
    try:
        yield temporary
        _publish(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
