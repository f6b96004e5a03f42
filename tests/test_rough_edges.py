"""Bad input and odd platforms: one line, no traceback, nothing half-written, text shown as typed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from matlab.bench.process import BenchError, run_measured
from matlab.cli import app
from matlab.errors import CheckpointError
from matlab.slice_config import SliceConfig, dump_slice_config
from matlab.slicing.slicer import slice_checkpoint

runner = CliRunner()


def _same_files(a, b) -> bool:
    names = sorted(path.name for path in a.glob("*.safetensors"))
    return names == sorted(path.name for path in b.glob("*.safetensors")) and all(
        (a / name).read_bytes() == (b / name).read_bytes() for name in names)


def test_brackets_in_paths_and_names_are_printed_as_typed(tmp_path):
    folder = tmp_path / "x[red]"
    folder.mkdir()
    bad = folder / "c[bold].yaml"
    bad.write_text("name: '[b]odd[/b]'\nlayers_skipped: [18]\nffn_widths: 8192\n")
    result = runner.invoke(app, ["validate", str(bad), "--arch", "gemma-3n-e4b"])
    assert result.exit_code == 1
    assert f"{bad}: layers_skipped (layer 18)" in result.stderr
    good = folder / "ok[1].yaml"
    good.write_text("name: '[i]fine[/i]'\nffn_widths: 8192\n")
    table = runner.invoke(app, ["params", "--arch", "gemma-3n-e4b", "--config", str(good)])
    assert table.exit_code == 0 and "sliced by [i]fine[/i]" in table.stdout
    missing = runner.invoke(app, ["slice", str(folder / "nowhere[x]"), "--config", str(good), "--out",
                                  str(tmp_path / "o")])
    assert missing.exit_code == 1 and "nowhere[x]" in missing.stderr and "Traceback" not in missing.output


def test_vision_hint_keeps_its_brackets(tiny_multimodal, tmp_path):
    """Building the multimodal model needs timm; without it the hint names the extra exactly."""
    blocked = "import sys; sys.modules['timm'] = None; sys.modules['torchvision'] = None; import runpy; " \
              "sys.argv = ['matformer', *sys.argv[1:]]; runpy.run_module('matlab', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", blocked, "synth", "--like", str(tiny_multimodal), "--out",
                             str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pip install 'matformer-lab[vision]'" in result.stderr and "--text-only" in result.stderr
    assert not (tmp_path / "o").exists()
    text_only = subprocess.run([sys.executable, "-c", blocked, "synth", "--like", str(tiny_multimodal), "--text-only",
                                "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert text_only.returncode == 0, text_only.stderr[-2000:]


@pytest.mark.parametrize("failure", ["EXDEV", "missing"])
def test_slicer_copies_without_copy_file_range(tiny_multimodal, tmp_path, monkeypatch, failure):
    """Across filesystems (EXDEV) and on platforms without copy_file_range (macOS), the slicer
    falls back to pread and write, with the same output."""
    config = SliceConfig(name="c", layers_skipped=[10, 11], ffn_widths=128)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "kernel")
    calls = []
    if failure == "missing":
        monkeypatch.delattr(os, "copy_file_range")
    else:
        def cross_device(*args):
            calls.append(args)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", cross_device)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "fallback")
    assert _same_files(tmp_path / "kernel", tmp_path / "fallback")
    assert failure == "missing" or len(calls) == 1  # tried once, then no more for this output


def test_other_copy_errors_are_not_swallowed(tiny_text, tmp_path, monkeypatch):
    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "copy_file_range", broken)
    with pytest.raises(OSError, match="Input/output error"):
        slice_checkpoint(tiny_text, SliceConfig(name="c", ffn_widths=128), tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_read_back_catches_wrong_bytes_and_publishes_nothing(tiny_text, tmp_path, monkeypatch):
    """The slicer compares what it wrote with the source before making the output visible."""
    real = os.copy_file_range

    def off_by_one_row(source, target, count, offset_src, *args):
        return real(source, target, count, offset_src - 4, *args)  # the right length from the wrong place
    monkeypatch.setattr(os, "copy_file_range", off_by_one_row)
    with pytest.raises(CheckpointError, match="read-back check failed: rows .* differ from the source"):
        slice_checkpoint(tiny_text, SliceConfig(name="c", ffn_widths=128), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_full_verification_reads_every_byte(tiny_multimodal, tmp_path):
    config = SliceConfig(name="c", layers_skipped=[2, 5], ffn_widths=[96] * 13)
    sampled = slice_checkpoint(tiny_multimodal, config, tmp_path / "a", text_only=True)
    everything = slice_checkpoint(tiny_multimodal, config, tmp_path / "b", text_only=True, verify_all=True,
                                  chunk_bytes=4096)
    assert everything.bytes_verified == everything.bytes_written > sampled.bytes_verified > 0


def test_missing_tokenizer_is_one_line(tiny_text, tmp_path):
    checkpoint = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_text, checkpoint)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (checkpoint / name).unlink(missing_ok=True)
    result = runner.invoke(app, ["eval", str(checkpoint), "--suite", "nano", "--limit", "1"])
    assert result.exit_code == 1 and "ships no tokenizer" in result.stderr and "Traceback" not in result.output


def test_benchmark_process_failure_is_a_typed_error():
    with pytest.raises(BenchError, match=r"matlab.bench.run_slice.*failed \(exit 2\)"):
        run_measured("matlab.bench.run_slice", ["no-such-method"])


def test_same_submodel_spelled_twice_is_one_identity(tiny_text, tmp_path):
    from matlab.arch.facts import facts_from_checkpoint
    from matlab.harness.suite import load_suite
    from matlab.harness.sweep import SweepError, SweepSettings, run_sweep
    from matlab.plan import SlicePlan

    scalar = SliceConfig(name="scalar", layers_skipped=[3], ffn_widths=128)
    listed = SliceConfig(name="listed", layers_skipped=[3], ffn_widths=[128] * 14)
    runs = SliceConfig(name="runs", layers_skipped=[3], ffn_widths=[{"width": 128, "count": 14}])
    facts = facts_from_checkpoint(tiny_text)
    identities = {SlicePlan.build(config, facts).submodel_id for config in (scalar, listed, runs)}
    assert len(identities) == 1
    assert SlicePlan.build(SliceConfig(name="x", layers_skipped=[4], ffn_widths=128), facts).submodel_id \
        not in identities
    for config in (scalar, listed):
        (tmp_path / f"{config.name}.yaml").write_text(dump_slice_config(config))
    from matlab.slice_config.bundled import resolve_suite

    with pytest.raises(SweepError, match=r"listed.yaml and .*scalar.yaml describe the same submodel"):
        run_sweep(tiny_text, sorted(tmp_path.glob("*.yaml")), tmp_path / "run",
                  SweepSettings(load_suite(resolve_suite("nano")), limit=1))
    assert not (tmp_path / "run").exists()
