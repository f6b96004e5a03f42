"""Healing a slice: distillation lowers its KL to the full model on held-out text (measured here
independently, with transformers' own models loaded from the two checkpoints), the output loads
in transformers and records the heal in its provenance and card; bad input is one line, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from matlab.cli import app
from matlab.core.calibration import kl_to_reference, make_calibration, reference_distributions
from matlab.core.loading import load_tokenizer
from matlab.slice_config import SliceConfig, dump_slice_config
from matlab.slicing.slicer import slice_checkpoint

from helpers import SLICE_CASES

runner = CliRunner()
SKIPPED, WIDTHS = SLICE_CASES["skip-in-sparse-and-shared"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(slice config, calibration text, held-out text): the held-out sentences are other ones."""
    folder = tmp_path_factory.mktemp("heal")
    config = folder / "slice.yaml"
    config.write_text(dump_slice_config(SliceConfig(name="cut", layers_skipped=tuple(SKIPPED),
                                                    ffn_widths=tuple(WIDTHS))))
    calibration, heldout = folder / "calibration.jsonl", folder / "heldout.txt"
    calibration.write_text("".join(json.dumps({"text": f"the {n % 9} cat sat on mat {n} ."}) + "\n"
                                   for n in range(300)))
    heldout.write_text(" ".join(f"the {n % 9} cat sat on mat {n} ." for n in range(1000, 1040)))
    return config, calibration, heldout


def _heal(checkpoint, config: Path, out: Path, *extra: str) -> list[str]:
    return ["heal", str(checkpoint), "--config", str(config), "--out", str(out), "--steps", "10", "--window", "32",
            "--batch-size", "4", "--calibration-tokens", "1024", "--top-k", "64", *extra]


def _load(directory: Path):
    from transformers import Gemma3nForCausalLM

    return Gemma3nForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.mark.parametrize("method", ["lora", "weights"])
def test_heal_lowers_heldout_kl_and_writes_a_checkpoint_that_records_it(tiny_text, texts, tmp_path, method):
    config, calibration, heldout = texts
    out = tmp_path / "healed"
    result = runner.invoke(app, _heal(tiny_text, config, out, "--method", method, "--calibration", str(calibration),
                                      "--heldout", str(heldout), "--learning-rate", "3e-3"))
    assert result.exit_code == 0, result.output
    # Independently of the heal's own measurement: transformers' models from the files.
    from matlab.slice_config import load_slice_config

    plain = tmp_path / "plain"
    slice_checkpoint(tiny_text, load_slice_config(config), plain)
    windows = make_calibration(load_tokenizer(tiny_text), [heldout.read_text()], "held out", 32, 1024)
    reference = reference_distributions(_load(tiny_text), windows, 64)
    before = kl_to_reference(_load(plain), windows, reference)
    after = kl_to_reference(_load(out), windows, reference)
    assert after < 0.8 * before, (before, after)
    provenance = json.loads((out / "matformer_provenance.json").read_text())
    heal = provenance["heal"]
    assert heal["method"] == method and heal["steps"] == 10
    assert heal["heldout"]["after"]["kl"] < heal["heldout"]["before"]["kl"]
    assert heal["heldout"]["before"]["kl"] == pytest.approx(before, rel=1e-3)
    assert heal["heldout"]["after"]["kl"] == pytest.approx(after, rel=1e-3)
    assert len(heal["calibration_sha256"]) == 64 and provenance["kept_layers"] == \
        [layer for layer in range(15) if layer not in SKIPPED]
    assert "## Healed" in (out / "README.md").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["healed", "plain"]  # no staging left


def _one_line(result, message: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_input_is_one_line_and_nothing_is_written(tiny_text, texts, tmp_path):
    config, calibration, heldout = texts
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(dump_slice_config(SliceConfig(name="wrong", layers_skipped=(40,), ffn_widths=128)))
    use = ("--calibration", str(calibration))
    cases = [
        (_heal(tiny_text, config, out), "--calibration is required"),
        (_heal(tiny_text, config, out, "--calibration", str(tmp_path / "missing.txt")), "--calibration"),
        (_heal(tiny_text, config, out, "--calibration", str(empty)), "no text in it"),
        (_heal(tiny_text, tmp_path / "missing.yaml", out, *use), "missing.yaml"),
        (_heal(tiny_text, wrong, out, *use), str(wrong)),
        (_heal(tiny_text, config, tiny_text / "healed", *use), "inside the input"),
        (_heal(tiny_text, config, out, *use, "--method", "magic"), "--method magic"),
        (_heal(tiny_text, config, out, *use, "--steps", "0"), "--steps 0"),
    ]
    for arguments, message in cases:
        _one_line(runner.invoke(app, arguments), message)
        assert not out.exists(), arguments
    assert not (tiny_text / "healed").exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line(runner.invoke(app, _heal(tiny_text, config, out, *use)), "--force")
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
