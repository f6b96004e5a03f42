"""The layout `slice --runtime R` writes: config and tensor names as R reads them, loaded back
by transformers with the same logits as the plain slice."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

CONFIG = SliceConfig(name="mixed", layers_skipped=[11], ffn_widths=[128, 256] * 7)  # tiny: 15 layers, consumers 10..14


def _tensors(directory: Path) -> dict[str, tuple[int, ...]]:
    found = {}
    for shard in directory.glob("*.safetensors"):
        with safe_open(shard, "pt") as handle:
            found.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})  # noqa: SIM118
    return found


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_mlx_lm_layout_is_the_multimodal_config_with_text_weights(tiny_multimodal, sample_ids, tmp_path):
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    plain = slice_checkpoint(tiny_multimodal, CONFIG, tmp_path / "plain", text_only=True).out
    mlx = slice_checkpoint(tiny_multimodal, CONFIG, tmp_path / "mlx", runtime="mlx-lm").out
    config = json.loads((mlx / "config.json").read_text())
    assert config["model_type"] == "gemma3n" and config["architectures"] == ["Gemma3nForConditionalGeneration"]
    text = config["text_config"]
    assert (text["rope_theta"], text["rope_local_base_freq"]) == (
        text["rope_parameters"]["full_attention"]["rope_theta"], text["rope_parameters"]["sliding_attention"]["rope_theta"])
    assert "vision_config" not in config and "audio_config" not in config
    names = _tensors(mlx)
    assert all(name.startswith("model.language_model.") for name in names)  # no towers, no other prefix
    plain_names = _tensors(plain)
    assert {name.replace("model.language_model.", "model.", 1): shape for name, shape in names.items()} == plain_names
    # The source stores the consumers' k/v (as the released checkpoints do): copied, not zeros.
    consumer_k = "model.language_model.layers.13.self_attn.k_proj.weight"
    shard = next(shard for shard in mlx.glob("*.safetensors") if consumer_k in safe_open(shard, "pt").keys())  # noqa: SIM118
    with safe_open(shard, "pt") as handle:
        assert handle.get_tensor(consumer_k).abs().sum() > 0
    text_config = Gemma3nTextConfig(**{k: v for k, v in text.items() if k != "model_type"})
    reloaded = Gemma3nForCausalLM.from_pretrained(mlx, config=text_config, dtype=torch.float32).eval()
    reference = Gemma3nForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(reloaded, sample_ids), _logits(reference, sample_ids), rtol=0, atol=0)


def test_consumer_kv_are_zero_filled_where_the_source_lacks_them(tiny_text, tmp_path):
    """transformers 5 does not store the KV-shared layers' k/v; llama.cpp's and mlx-lm's loaders
    want them: the slicer writes zeros there (those layers read their producer's cache)."""
    from transformers import Gemma3nForCausalLM

    source_names = _tensors(tiny_text)
    stripped = tmp_path / "stripped"
    model = Gemma3nForCausalLM.from_pretrained(tiny_text, dtype=torch.float32)
    model.save_pretrained(stripped)  # transformers 5: no consumer k/v
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (stripped / name).write_bytes((tiny_text / name).read_bytes())
    assert not any(".layers.12.self_attn.k_proj" in name for name in _tensors(stripped))
    out = slice_checkpoint(stripped, CONFIG, tmp_path / "gguf-ready", runtime="llama.cpp", check_rules=False).out
    names = _tensors(out)
    kept = 14  # 15 layers, one skipped; 4 KV-shared remain (10, 12, 13, 14 -> 10..13)
    for layer in range(kept):
        for suffix in ("k_proj.weight", "v_proj.weight", "k_norm.weight"):
            assert f"model.layers.{layer}.self_attn.{suffix}" in names
    with safe_open(next(out.glob("*.safetensors")), "pt") as handle:
        assert handle.get_tensor("model.layers.12.self_attn.k_proj.weight").abs().sum() == 0
        assert handle.get_tensor("model.layers.3.self_attn.k_proj.weight").abs().sum() > 0  # a real layer's
    assert names["model.layers.12.self_attn.k_proj.weight"] == source_names["model.layers.12.self_attn.k_proj.weight"]
