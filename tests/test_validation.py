"""Slice configs checked against architectures: every rejection names field, layer and fix."""

from __future__ import annotations

import pytest

from matlab.arch.facts import facts_from_arch, facts_from_checkpoint
from matlab.families import GEMMA3N
from matlab.slice_config import SliceConfig
from matlab.slice_config.validation import check_slice_config


@pytest.fixture(scope="module")
def e4b():
    return facts_from_arch("gemma-3n-e4b")


def _messages(config, facts, severity="error"):
    return [str(p) for p in check_slice_config(config, facts, "c.yaml") if p.severity == severity]


def test_e4b_facts_come_from_config(e4b):
    assert e4b.num_layers == 35 and e4b.kv_producers == {"sliding_attention": 18, "full_attention": 19}
    assert e4b.kv_consumers == list(range(20, 35)) and GEMMA3N.sparse_layers(e4b.text_config) == list(range(10))


def test_kv_roles_match_transformers_rule(tiny_text):
    from transformers import Gemma3nTextConfig

    facts = facts_from_checkpoint(tiny_text)
    for shared in (0, 5, 7, 10):
        config = Gemma3nTextConfig(num_hidden_layers=15, num_kv_shared_layers=shared)
        producers, consumers = GEMMA3N.kv_roles(config.layer_types, shared)
        modes = config.kv_sharing_modes
        assert consumers == [i for i, m in enumerate(modes) if m == "reuse"]
        assert sorted(producers.values()) == [i for i, m in enumerate(modes) if m == "store"]
    assert facts.kv_producers == {"sliding_attention": 8, "full_attention": 9}


def test_valid_official_style_config_has_no_problems(e4b):
    config = SliceConfig(name="e2b", layers_skipped=[20, 21, 22, 23, 24], ffn_widths=8192)
    assert check_slice_config(config, e4b, "c.yaml") == []


@pytest.mark.parametrize("skipped, widths, expected", [
    ([20], [8192] * 35, "c.yaml: ffn_widths: 35 widths for 34 kept layers (35 layers minus 1 skipped); give one width per kept layer"),
    ([], [8192] * 34 + [20000], "c.yaml: ffn_widths[34] (layer 34): width 20000 exceeds the base width 16384; use at most 16384"),
    ([35, 40], 8192, "c.yaml: layers_skipped (layer 35): out of range; gemma-3n-e4b has layers 0..34"),
    ([18], 8192, "c.yaml: layers_skipped (layer 18): layer 18 is the KV producer of the sliding_attention layers 20..23, 25..28, 30..33 and cannot be skipped; remove 18 from layers_skipped"),
    ([19], 8192, "layer 19 is the KV producer of the full_attention layers 24, 29, 34"),
    (list(range(35)), 8192, "c.yaml: layers_skipped: skips all 35 layers; keep at least one"),
])
def test_rejections(e4b, skipped, widths, expected):
    config = SliceConfig(name="bad", layers_skipped=skipped, ffn_widths=widths)
    assert any(expected in message for message in _messages(config, e4b)), _messages(config, e4b)


def test_orphaned_attention_type_is_rejected(e4b):
    # Skipping every full-attention layer before the shared region (4, 9, 14, 19) leaves the
    # full-attention consumers 24, 29, 34 without a producer; 19 is reported on its own too.
    config = SliceConfig(name="bad", layers_skipped=[4, 9, 14, 19], ffn_widths=8192)
    messages = _messages(config, e4b)
    assert any("no full_attention layer is left before the KV-shared region to produce KV for layers 24, 29, 34"
               in m for m in messages), messages


def test_all_problems_reported_at_once(e4b):
    config = SliceConfig(name="bad", layers_skipped=[18, 19, 99], ffn_widths=[8192] * 3)
    messages = _messages(config, e4b)
    assert len(messages) >= 4  # 99 out of range, 18, 19 producers, widths count


def test_untrained_width_is_a_warning(e4b):
    config = SliceConfig(name="odd", ffn_widths=[6144] + [16384] * 34)
    assert _messages(config, e4b) == []
    assert _messages(config, e4b, "warning") == [
        "c.yaml: ffn_widths[0] (layer 0): width 6144 was never trained as a granularity (trained: 16384, 8192); "
        "the submodel may lose quality"]


def test_base_mismatch_is_rejected(tiny_text):
    facts = facts_from_checkpoint(tiny_text)
    config = SliceConfig(name="e2b", base="gemma-3n-e4b", layers_skipped=[20], ffn_widths=8192)
    messages = _messages(config, facts)
    assert any("base: the config targets gemma-3n-e4b (35 layers, FFN 16384)" in m for m in messages), messages
