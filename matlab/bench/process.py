"""Running one side of a benchmark in a fresh process, measured from outside.

Each side is a module of this package run with `python -m`; it prints one JSON line of what
it measured inside, and this module adds the wall time and the child's peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from matlab.errors import MatformerError


class BenchError(MatformerError):
    """A benchmark's process failed, or its two sides disagree."""


def drop_page_cache(directory: Path) -> None:
    """Ask the kernel to forget cached pages of a directory's files (a cold-cache run)."""
    os.sync()  # dirty pages cannot be dropped
    for path in directory.glob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def run_measured(module: str, args: list[str]) -> tuple[dict, float, int]:
    """Run `python -m module args...` in a fresh process: (the JSON of its last output line,
    wall seconds, peak RSS bytes of that process). A failure raises BenchError with the last
    line the process wrote to stderr."""
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=stderr,
                                   text=True)
        stdout = process.stdout.read()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, so its resource usage is ours to read
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            stderr.seek(0)
            last = (stderr.read().strip().splitlines() or ["(no output)"])[-1]
            raise BenchError(f"benchmark process `python -m {module} {' '.join(args[:1])}` failed "
                             f"(exit {process.returncode}): {last}")
    return json.loads(stdout.strip().splitlines()[-1]), seconds, usage.ru_maxrss * 1024  # Linux reports KiB
