"""Synthetic checkpoints: the architecture's exact tensors, loadable by transformers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.cli import app
from matlab.slicing.synth import synthesize_checkpoint

runner = CliRunner()


def test_synth_matches_source_inventory_and_loads(tiny_multimodal, tmp_path):
    from transformers import Gemma3nForConditionalGeneration

    facts = facts_from_checkpoint(tiny_multimodal)
    out = synthesize_checkpoint(facts, tmp_path / "synth", max_shard_bytes=250_000, seed=3)
    original = {name: stored.shape for name, stored in inventory_from_checkpoint(tiny_multimodal).items()}
    synthetic = {name: stored.shape for name, stored in inventory_from_checkpoint(out).items()}
    assert synthetic == original  # names and shapes, consumer k/v included
    model = Gemma3nForConditionalGeneration.from_pretrained(out)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_synth_text_only_and_seeded(tiny_multimodal, tmp_path):
    from transformers import Gemma3nForCausalLM

    args = ["synth", "--like", str(tiny_multimodal), "--text-only", "--seed", "5"]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b")]).exit_code == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model_type"] == "gemma3n_text"
    shards = sorted(p.name for p in (tmp_path / "a").glob("*.safetensors"))
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in shards)
    Gemma3nForCausalLM.from_pretrained(tmp_path / "a")
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert again.exit_code == 2 and "not empty; pass --force" in again.stderr


@pytest.mark.parametrize("size", ["lots", "5XB"])
def test_bad_shard_size_is_one_line(tiny_multimodal, tmp_path, size):
    result = runner.invoke(app, ["synth", "--like", str(tiny_multimodal), "--out", str(tmp_path / "x"),
                                 "--max-shard-size", size])
    assert result.exit_code == 2 and "--max-shard-size: cannot read size" in result.stderr
    assert not (tmp_path / "x").exists()
