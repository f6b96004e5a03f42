"""Atomic output directories: write beside the target, swap into place when complete.

An output is built in a temporary directory beside `out` (named after the host and pid that
own it, for the reader) that its owner holds an `flock` on while it works: a later run removes
the ones nobody holds (a killed run's leftovers) and leaves those of runs still working, also
in other PID namespaces on the same host. A replace (`--force`) keeps the old output in place
until the new one is complete: on Linux the two directories are exchanged in one atomic
`renameat2(RENAME_EXCHANGE)`; elsewhere the old output is moved aside and moved back if the
new one cannot take its place (and restored by the next run if this one was killed between).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from matlab import __version__
from matlab.errors import MatformerWarning, OutputExistsError

# Written into every output, so that `--force` replaces only what this tool made.
OUTPUT_MARKER = ".matformer-output"
# The machine-readable record written beside every slice (`matlab.slicing.card`).
PROVENANCE_NAME = "matformer_provenance.json"
# Outputs of versions before the marker: a slice's provenance, a report that names the tool.
_LEGACY_PROVENANCE = PROVENANCE_NAME
_LEGACY_REPORT = ("index.html", b"MatFormer Lab")
FRESH_S = 10.0
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _staging_prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-"


def _staging_directory(out: Path, kind: str) -> Path:
    """A new folder beside `out` for a new output (`tmp`) or a replaced one (`old`), named after its owner."""
    return Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out, kind)}{_host_tag()}-{os.getpid()}-", dir=out.parent))


def check_apart(out: Path, inputs: Iterable[str | Path | None], option: str = "--out", replaces: bool = True) -> None:
    """Refuse an `out` that is or lies inside any of `inputs` (files or directories) and, where
    `out` is replaced whole (`replaces`), one that contains an input; compared by real path, so
    that writing `out` can never touch an input."""
    target = Path(os.path.realpath(out))
    for entry in inputs:
        if entry is None:
            continue
        source = Path(os.path.realpath(entry))
        if source == target or (replaces and target in source.parents):
            raise OutputExistsError(f"{option} {out} is or contains the input {entry}; writing there would replace "
                                    f"the input: choose an {option} outside it")
        if source in target.parents:
            raise OutputExistsError(f"{option} {out} lies inside the input {entry}; choose an {option} outside it")


def is_tool_output(directory: Path, markers: tuple[str, ...] = ()) -> bool:
    """Whether `directory` is an output of this tool (its marker, a legacy slice or report, or
    a file matching one of `markers`, glob patterns a caller's own outputs are known by)."""
    if (directory / OUTPUT_MARKER).is_file() or (directory / _LEGACY_PROVENANCE).is_file():
        return True
    report = directory / _LEGACY_REPORT[0]
    with suppress(OSError):
        if report.is_file():
            with open(report, "rb") as handle:
                if _LEGACY_REPORT[1] in handle.read(1 << 20):
                    return True
    return any(next(directory.glob(marker), None) is not None for marker in markers)


def check_output(out: Path, force: bool, inputs: Iterable[str | Path | None] = (),
                 markers: tuple[str, ...] = ()) -> None:
    """Refuse a non-empty `out` unless forced, an `out` that is a file, one that `force` would
    replace although it is no output of this tool (`is_tool_output`), and one that overlaps an
    input."""
    check_apart(out, inputs)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")
    if not is_tool_output(out, markers):
        raise OutputExistsError(f"{out} is not empty and was not written by MatFormer Lab (no {OUTPUT_MARKER}); "
                                "--force replaces only this tool's outputs: remove it yourself or choose another --out")


def _hold(directory: Path) -> int | None:
    """An flock on `directory` (its descriptor), or None while another process holds one."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    return handle


def clean_stale_staging(out: Path) -> list[Path]:
    """Deal with the temporary directories beside `out` that killed runs left and nobody holds:
    a moved-aside old output is moved back where `out` is missing (a kill between the two
    renames of a replace), the rest removed; returns what was removed or restored. Folders of
    versions before the flock are reported (MatformerWarning), not touched."""
    done: list[Path] = []
    if not out.parent.is_dir():
        return done
    owned = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-[A-Za-z0-9-]+-\d+-")
    for kind in ("old", "tmp"):  # an old output first: it may be the only copy
        for leftover in sorted(out.parent.glob(f"{glob.escape(_staging_prefix(out, kind))}*")):
            if not owned.match(leftover.name):
                warnings.warn(f"{leftover}: a temporary folder left by an earlier MatFormer Lab run that was killed; "
                              "remove it if no run is writing there", MatformerWarning, stacklevel=2)
                continue
            if leftover.is_symlink() or not leftover.is_dir() or time.time() - leftover.stat().st_mtime < FRESH_S:
                continue  # a fresh one may be a run's, made a moment before it takes its flock
            handle = _hold(leftover)
            if handle is None:  # a run still working
                continue
            try:
                kept = leftover / out.name
                if kind == "old" and not out.exists() and kept.is_dir():
                    os.rename(kept, out)
                    warnings.warn(f"{out}: restored the previous output, which a killed replace had moved aside",
                                  MatformerWarning, stacklevel=2)
                shutil.rmtree(leftover, ignore_errors=True)
            finally:
                os.close(handle)
            done.append(leftover)
    return done


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


def _remove_replaced(path: Path) -> None:
    """Remove what a swap left at `path`: the old output, or the link that was `out`."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _publish(temporary: Path, out: Path) -> None:
    if not out.exists() and not out.is_symlink():
        os.rename(temporary, out)
        return
    # Replace only now that the new output is complete; the old one stays until the new one is in place.
    if _exchange(temporary, out):
        _remove_replaced(temporary)  # now holds the old output
        return
    retired = _staging_directory(out, "old")
    handle = _hold(retired)  # held: no other run's clean-up touches the old output while it is here
    try:
        os.rename(out, retired / out.name)
        try:
            os.rename(temporary, out)
        except BaseException:
            os.rename(retired / out.name, out)  # should this fail too, the next run restores it
            shutil.rmtree(retired, ignore_errors=True)
            raise
        _remove_replaced(retired / out.name)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        if handle is not None:
            os.close(handle)


@contextmanager
def staged_output(out: Path, force: bool, inputs: Iterable[str | Path | None] = (),
                  markers: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it becomes `out` (marked as this
    tool's output), on any failure (an exception or KeyboardInterrupt) it is removed and `out`
    is untouched. `inputs` are the files and folders the work reads: `out` may not overlap any
    of them; `markers` are glob patterns by which a caller's earlier outputs are known."""
    clean_stale_staging(out)
    check_output(out, force, inputs, markers)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = _staging_directory(out, "tmp")
    handle = _hold(temporary)
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output should not be
    try:
        yield temporary
        (temporary / OUTPUT_MARKER).write_text(json.dumps({"tool": "matformer-lab", "version": __version__}) + "\n",
                                               encoding="utf-8")
        _publish(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        if handle is not None:
            os.close(handle)
