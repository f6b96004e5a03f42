"""The slicer benchmark at small scale (the full-size run is in reports/benchmarks.md)."""

from __future__ import annotations

from matlab.bench.slice_bench import bench_slice, verify_same_tensors
from matlab.slice_config import SliceConfig, dump_slice_config
from matlab.slicer import slice_checkpoint


def test_bench_slice_measures_and_verifies(tiny_multimodal, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(dump_slice_config(SliceConfig(name="c", layers_skipped=[10, 11], ffn_widths=128)))
    result = bench_slice(tiny_multimodal, config, tmp_path / "work", text_only=True)
    methods = result["methods"]
    assert set(methods) == {"ours", "naive", "copy"} and result["tensors_verified_equal"] > 100
    assert all(m["seconds"] > 0 and m["peak_rss_bytes"] > 0 for m in methods.values())
    assert methods["naive"]["bytes_read"] >= methods["ours"]["bytes_read"]  # naive loads whole tensors
    assert result["ours_over_naive_seconds"] > 0


def test_verify_detects_differences(tiny_text, tmp_path):
    import shutil

    import pytest

    slice_checkpoint(tiny_text, SliceConfig(name="a", ffn_widths=128), tmp_path / "a")
    slice_checkpoint(tiny_text, SliceConfig(name="b", ffn_widths=[128] * 14 + [127]), tmp_path / "b")
    with pytest.raises(AssertionError, match="shapes"):
        verify_same_tensors(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    shard = sorted((tmp_path / "c").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor's data
    shard.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="values differ"):
        verify_same_tensors(tmp_path / "a", tmp_path / "c")
    assert verify_same_tensors(tmp_path / "a", tmp_path / "a") > 0
