"""Slicer benchmark: wall time, peak RSS and bytes moved, for the workbench's slicer, the naive
baseline and the copy floor, each run in its own process on the same input and config."""

from __future__ import annotations

import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from matlab.bench.process import BenchError, drop_page_cache, run_measured
from matlab.io.reader import CheckpointFiles, RangeReader


@dataclass(frozen=True)
class Measurement:
    method: str
    seconds: float
    peak_rss_bytes: int
    bytes_read: int
    bytes_written: int


def _measure(method: str, source: Path, config: Path, out: Path, text_only: bool) -> Measurement:
    shutil.rmtree(out, ignore_errors=True)
    drop_page_cache(source)
    moved, seconds, rss = run_measured("matlab.bench.run_slice", [method, str(source), str(config), str(out),
                                                                  *(["--text-only"] if text_only else [])])
    return Measurement(method, seconds, rss, moved["read"], moved["written"])


def verify_same_tensors(first: Path, second: Path, chunk_rows: int = 4096) -> int:
    """Compare two checkpoints tensor by tensor (bounded memory); returns tensors compared."""
    a, b = CheckpointFiles(first).tensors, CheckpointFiles(second).tensors
    if set(a) != set(b):
        raise BenchError(f"tensor names differ: {sorted(set(a) ^ set(b))[:5]}")
    with RangeReader() as reader_a, RangeReader() as reader_b:
        for name in a:
            if a[name].shape != b[name].shape:
                raise BenchError(f"{name}: shapes {a[name].shape} and {b[name].shape} differ")
            rows = a[name].shape[0] if a[name].shape else 1
            for start in range(0, rows, chunk_rows):
                stop = min(rows, start + chunk_rows)
                if a[name].shape:
                    left, right = reader_a.read_rows(a[name], start, stop), reader_b.read_rows(b[name], start, stop)
                else:
                    left = reader_a.read(a[name].file, a[name].offset, a[name].nbytes)
                    right = reader_b.read(b[name].file, b[name].offset, b[name].nbytes)
                if not (left == right).all():
                    raise BenchError(f"{name}: values differ in rows {start}..{stop}")
    return len(a)


def bench_slice(source: Path, config: Path, work_dir: Path, text_only: bool = False,
                repeat: int = 1) -> dict:
    """Median of `repeat` runs of each method, the ratios, and a read-back check.

    The copy floor copies the files of our own output, so it moves exactly the output's bytes.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Measurement]] = {"ours": [], "naive": [], "copy": []}
    for attempt in range(repeat):
        # Every run starts with the input's pages dropped from the cache; the order of the two
        # slicers alternates so neither always follows the other.
        order = ("ours", "naive") if attempt % 2 == 0 else ("naive", "ours")
        for method in order:
            runs[method].append(_measure(method, source, config, work_dir / method, text_only))
        runs["copy"].append(_measure("copy", work_dir / "ours", config, work_dir / "copy", text_only))
    compared = verify_same_tensors(work_dir / "ours", work_dir / "naive")
    summary = {method: {"seconds": statistics.median(m.seconds for m in measured),
                        "peak_rss_bytes": max(m.peak_rss_bytes for m in measured),
                        "bytes_read": measured[0].bytes_read, "bytes_written": measured[0].bytes_written}
               for method, measured in runs.items()}
    shutil.rmtree(work_dir / "naive", ignore_errors=True)
    shutil.rmtree(work_dir / "copy", ignore_errors=True)
    return {"source": str(source), "config": str(config), "text_only": text_only, "repeat": repeat,
            "methods": summary, "tensors_verified_equal": compared,
            "ours_over_naive_seconds": summary["ours"]["seconds"] / summary["naive"]["seconds"],
            "ours_over_copy_seconds": summary["ours"]["seconds"] / summary["copy"]["seconds"],
            "ours_over_naive_rss": summary["ours"]["peak_rss_bytes"] / summary["naive"]["peak_rss_bytes"],
            "runs": {method: [asdict(m) for m in measured] for method, measured in runs.items()}}
