"""Exact parameter accounting, checked against transformers' models built on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matlab.arch.facts import facts_from_arch, facts_from_checkpoint
from matlab.arch.inventory import built_inventory, inventory_from_checkpoint, inventory_from_facts
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.slice_config import SliceConfig, load_slice_config

OFFICIAL = sorted((Path(__file__).resolve().parent.parent / "slice_configs" / "gemma-3n-e4b").glob("*.yaml"))


@pytest.fixture(scope="module")
def e4b():
    facts = facts_from_arch("gemma-3n-e4b")
    return facts, inventory_from_facts(facts)


def _meta_text_params(text_config: dict) -> tuple[int, int]:
    """(effective, text total) of Gemma3nForCausalLM built by transformers, plus stored consumer k/v."""
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(**{k: v for k, v in text_config.items() if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        model = Gemma3nForCausalLM(config)
    total = sum(p.numel() for p in model.model.parameters())
    embeddings = model.model.embed_tokens.weight.numel() + model.model.embed_tokens_per_layer.weight.numel()
    consumers = sum(1 for mode in config.kv_sharing_modes if mode == "reuse")
    stored_kv = consumers * (2 * config.num_key_value_heads * config.head_dim * config.hidden_size + config.head_dim)
    return total + stored_kv - embeddings, total + stored_kv


def test_e4b_reference_figures(e4b):
    facts, inventory = e4b
    report = count_parameters(inventory, facts)
    assert report.effective_params == 3_980_491_248
    assert report.audio_params == 681_348_640 and report.vision_params == 294_126_912
    assert report.text_params == 6_835_235_568 + 31_461_120
    assert report.total_bytes == report.total_params * 2  # bf16


def test_bundled_inventory_is_what_transformers_builds(e4b):
    """`--arch gemma-3n-e4b` counts from an inventory shipped as data (so that it needs no timm);
    it must be exactly what transformers' own classes build, consumer k/v included."""
    facts, inventory = e4b
    assert inventory == built_inventory(facts)
    text_only = built_inventory(facts, text_only=True)  # the text model alone, no vision tower built
    assert text_only == {name: stored for name, stored in inventory.items() if name.startswith(facts.text_prefix)}


def test_e2b_reference_figures(e4b):
    facts, inventory = e4b
    plan = SlicePlan.build(SliceConfig(name="e2b", layers_skipped=[20, 21, 22, 23, 24], ffn_widths=8192), facts)
    report = count_parameters(inventory, facts, plan)
    assert report.effective_params == 1_905_495_648 and report.text_params == 4_456_156_768


@pytest.mark.parametrize("path", OFFICIAL, ids=lambda p: p.stem)
def test_official_configs_match_transformers(e4b, path):
    facts, inventory = e4b
    config = load_slice_config(path)
    plan = SlicePlan.build(config, facts, str(path))
    report = count_parameters(inventory, facts, plan)
    assert (report.effective_params, report.text_params) == _meta_text_params(plan.sliced_text_config())
    stated = config.reference.effective_params_b
    assert abs(report.effective_params / 1e9 - stated) < 0.06  # stated figures are rounded, some overstated


@pytest.mark.parametrize("skipped, widths", [([15, 16, 17], 4096), ([0, 1, 2, 3, 4], 6144), ([], 16384),
                                             ([25, 26, 27, 28, 29, 30, 31, 32, 33, 34], [8192, 16384] * 12 + [12288])])
def test_custom_configs_match_transformers(e4b, skipped, widths):
    facts, inventory = e4b
    plan = SlicePlan.build(SliceConfig(name="c", layers_skipped=skipped, ffn_widths=widths), facts)
    report = count_parameters(inventory, facts, plan)
    assert (report.effective_params, report.text_params) == _meta_text_params(plan.sliced_text_config())


def test_checkpoint_inventory_counts_stored_tensors(tiny_multimodal):
    facts = facts_from_checkpoint(tiny_multimodal)
    report = count_parameters(inventory_from_checkpoint(tiny_multimodal), facts)
    effective, text = _meta_text_params(facts.text_config)
    assert (report.effective_params, report.text_params) == (effective, text)
    text_only = count_parameters(inventory_from_checkpoint(tiny_multimodal), facts, text_only=True)
    assert text_only.audio_params == text_only.vision_params == 0 and text_only.text_params == text
    assert report.audio_params > 0 and report.vision_params > 0
