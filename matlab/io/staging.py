"""Atomic output directories: write beside the target, rename into place when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matlab.errors import OutputExistsError


def check_output(out: Path, force: bool) -> None:
    """Refuse a non-empty `out` unless forced; `out` must not be a file."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it or choose another --out")


def _publish(temporary: Path, out: Path) -> None:
    if out.exists():  # replace only now that the new output is complete
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, retired / out.name)
        os.rename(temporary, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(temporary, out)


@contextmanager
def staged_output(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory beside `out`; on success it becomes `out`, on any
    failure (an exception or KeyboardInterrupt) it is removed and `out` is untouched."""
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    temporary.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output should not be
    try:
        yield temporary
        _publish(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
