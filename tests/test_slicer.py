"""The streaming slicer against transformers' own Gemma 3n classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from matlab.errors import CheckpointError, OutputExistsError, SliceConfigError
from matlab.io.staging import OUTPUT_MARKER, PROVENANCE_NAME
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

from helpers import SLICE_CASES
from oracle import load_full_text_model, oracle_logits

CONFIGS = SLICE_CASES


def _sliced_causal_lm(directory: Path):
    from transformers import Gemma3nForCausalLM

    return Gemma3nForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_text_only_slice_matches_oracle(tiny_multimodal, tmp_path, sample_ids, name):
    skipped, widths = CONFIGS[name]
    config = SliceConfig(name=name, layers_skipped=skipped, ffn_widths=widths)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "out", text_only=True, chunk_bytes=4096)
    with torch.no_grad():
        logits = _sliced_causal_lm(tmp_path / "out")(input_ids=sample_ids).logits
    expected = oracle_logits(tiny_multimodal, skipped, widths, sample_ids)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["skip-in-kv-shared", "odd-widths"])
def test_text_layout_slice_matches_oracle(tiny_text, tmp_path, sample_ids, name):
    skipped, widths = CONFIGS[name]
    slice_checkpoint(tiny_text, SliceConfig(name=name, layers_skipped=skipped, ffn_widths=widths), tmp_path / "out")
    with torch.no_grad():
        logits = _sliced_causal_lm(tmp_path / "out")(input_ids=sample_ids).logits
    torch.testing.assert_close(logits, oracle_logits(tiny_text, skipped, widths, sample_ids), rtol=1e-5, atol=1e-5)


def test_multimodal_slice_loads_and_matches_oracle(tiny_multimodal, tmp_path, sample_ids):
    from transformers import Gemma3nForConditionalGeneration

    skipped, widths = CONFIGS["skip-in-kv-shared"]
    slice_checkpoint(tiny_multimodal, SliceConfig(name="mm", layers_skipped=skipped, ffn_widths=widths),
                     tmp_path / "out", max_shard_bytes=200_000)
    model = Gemma3nForConditionalGeneration.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=sample_ids).logits
    torch.testing.assert_close(logits, oracle_logits(tiny_multimodal, skipped, widths, sample_ids),
                               rtol=1e-5, atol=1e-5)
    # audio and vision towers pass through byte for byte
    full = Gemma3nForConditionalGeneration.from_pretrained(tiny_multimodal, dtype=torch.float32)
    for tower in ("audio_tower", "vision_tower", "embed_vision", "embed_audio"):
        for (name, a), (_, b) in zip(getattr(full.model, tower).state_dict().items(),
                                     getattr(model.model, tower).state_dict().items()):
            assert torch.equal(a, b), f"{tower}.{name} changed"


def test_identity_slice_reproduces_original_exactly(tiny_multimodal, tmp_path, sample_ids):
    slice_checkpoint(tiny_multimodal, SliceConfig(name="full", ffn_widths=256), tmp_path / "out", text_only=True)
    text_model, _ = load_full_text_model(tiny_multimodal)
    sliced = _sliced_causal_lm(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(sliced.model(input_ids=sample_ids).last_hidden_state,
                           text_model(input_ids=sample_ids).last_hidden_state)


def test_output_files_config_card_and_provenance(tiny_multimodal, tmp_path):
    out = tmp_path / "e2b-like"
    result = slice_checkpoint(tiny_multimodal, SliceConfig(name="nested", layers_skipped=[10, 11, 12, 13, 14],
                                                           ffn_widths=128), out, max_shard_bytes=100_000)
    assert result.shards > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard_bytes = sum(os.path.getsize(out / name) for name in set(index["weight_map"].values()))
    assert index["metadata"]["total_size"] < shard_bytes  # headers come on top of the data
    text = json.loads((out / "config.json").read_text())["text_config"]
    assert text["num_hidden_layers"] == 10 and text["num_kv_shared_layers"] == 0
    assert text["intermediate_size"] == [128] * 10 and len(text["layer_types"]) == 10
    assert text["activation_sparsity_pattern"] == [0.95] * 5 + [0.0] * 5
    names = set(index["weight_map"])
    assert not any(".layers.10." in name for name in names)
    with safe_open(out / index["weight_map"]["model.language_model.embed_tokens_per_layer.weight"], "pt") as f:
        assert f.get_slice("model.language_model.embed_tokens_per_layer.weight").get_shape() == [384, 80]
    for copied in ("tokenizer_config.json", "chat_template.jinja", "processor_config.json", "generation_config.json"):
        assert (out / copied).read_bytes() == (tiny_multimodal / copied).read_bytes()
    provenance = json.loads((out / PROVENANCE_NAME).read_text())
    assert provenance["kept_layers"] == list(range(10)) and provenance["source_checkpoint"]["config_sha256"]
    assert provenance["params"]["effective_params"] == result.params.effective_params
    card = (out / "README.md").read_text()
    assert "layers skipped: [10, 11, 12, 13, 14]" in card and f"{result.params.effective_params:,}" in card
    assert not list(tmp_path.glob(".e2b-like*")), "temporary directory left behind"


def test_text_only_drops_towers_and_processor_files(tiny_multimodal, tmp_path):
    slice_checkpoint(tiny_multimodal, SliceConfig(name="t", ffn_widths=128), tmp_path / "out", text_only=True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gemma3n_text" and config["architectures"] == ["Gemma3nForCausalLM"]
    names = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    assert all(name.startswith("model.layers.") or name.startswith("model.") and "tower" not in name for name in names)
    assert not any("audio" in name or "vision" in name for name in names)
    assert not (tmp_path / "out" / "processor_config.json").exists()


def test_chunk_size_does_not_change_output(tiny_multimodal, tmp_path):
    config = SliceConfig(name="c", layers_skipped=[3], ffn_widths=[100] * 14)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "small", chunk_bytes=1)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "large", chunk_bytes=2**30)
    for name in sorted(p.name for p in (tmp_path / "large").glob("*.safetensors")):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


def test_refuses_non_empty_output_without_force(tiny_text, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / OUTPUT_MARKER).write_text("{}")  # an earlier output: --force replaces only those
    with pytest.raises(OutputExistsError, match="not empty; pass --force"):
        slice_checkpoint(tiny_text, SliceConfig(name="x", ffn_widths=128), out)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "keep.txt"]
    slice_checkpoint(tiny_text, SliceConfig(name="x", ffn_widths=128), out, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_invalid_config_writes_nothing(tiny_text, tmp_path):
    with pytest.raises(SliceConfigError, match=r"layer 8 is the KV producer"):
        slice_checkpoint(tiny_text, SliceConfig(name="x", layers_skipped=[8], ffn_widths=128), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_truncated_source_fails_cleanly(tiny_text, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in tiny_text.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    shard = sorted(broken.glob("model-0*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        slice_checkpoint(broken, SliceConfig(name="x", ffn_widths=128), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        slice_checkpoint(tmp_path, SliceConfig(name="x", ffn_widths=128), tmp_path / "out")
