"""Full-size benchmarks as opt-in checks (`python -m pytest -m slow tests/test_fullsize.py`).

They synthesize a text-only E4B of the release's shapes (about 11 GB of disk; point
MATFORMER_FULLSIZE_CHECKPOINT at an existing full-size checkpoint to reuse it) and check the
slicer's memory bound, its wall time as a ratio of the copy floor measured in the same run,
and that switching elastically gives the logits of slicing to disk. Numbers: reports/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
E2B = REPO / "slice_configs" / "gemma-3n-e4b" / "e2b.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> Path:
    existing = os.environ.get("MATFORMER_FULLSIZE_CHECKPOINT")
    if existing:
        return Path(existing)
    out = tmp_path_factory.mktemp("fullsize") / "e4b"
    subprocess.run([sys.executable, "-m", "matlab", "synth", "--arch", "gemma-3n-e4b", "--out", str(out),
                    "--text-only"], check=True)
    return out


def test_fullsize_slice_is_bounded_and_near_the_copy_floor(full_size, tmp_path):
    from matlab.bench.slice_bench import bench_slice

    result = bench_slice(full_size, E2B, tmp_path / "work", text_only=True)
    ours = result["methods"]["ours"]
    assert ours["peak_rss_bytes"] < 2**30
    assert result["ours_over_naive_rss"] < 0.2
    assert result["ours_over_copy_seconds"] < 1.5
    assert result["tensors_verified_equal"] > 0


def test_fullsize_elastic_switch_matches_the_slice(full_size, tmp_path):
    from matlab.bench.sweep_bench import bench_switch

    result = bench_switch(full_size, E2B, tmp_path / "work", dtype="bfloat16", builds=3)
    assert result["max_logit_difference"] == 0.0
    assert result["disk_over_elastic"] > 1
