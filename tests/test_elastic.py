"""Elastic submodels: equal to the sliced checkpoint, sharing the full model's storage."""

from __future__ import annotations

import gc

import pytest
import torch

from matlab.core.elastic import build_submodel
from matlab.core.loading import load_model
from matlab.plan import SlicePlan
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

from helpers import SLICE_CASES

CONFIGS = {**SLICE_CASES, "identity": ([], 256), "skip-middle-blocks": ([1, 2, 6, 12], [128, 256] * 5 + [64])}


@pytest.fixture(scope="module")
def full_multimodal(tiny_multimodal):
    return load_model(tiny_multimodal)


@pytest.fixture(scope="module")
def full_text(tiny_text):
    return load_model(tiny_text)


def _plan(loaded, skipped, widths):
    return SlicePlan.build(SliceConfig(name="c", layers_skipped=skipped, ffn_widths=widths), loaded.facts)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_elastic_equals_sliced_checkpoint_multimodal(full_multimodal, tiny_multimodal, tmp_path, sample_ids, name):
    skipped, widths = CONFIGS[name]
    submodel = build_submodel(full_multimodal.model, _plan(full_multimodal, skipped, widths))
    slice_checkpoint(tiny_multimodal, SliceConfig(name=name, layers_skipped=skipped, ffn_widths=widths),
                     tmp_path / "out")
    sliced = load_model(tmp_path / "out").model
    with torch.no_grad():
        torch.testing.assert_close(submodel(input_ids=sample_ids).logits, sliced(input_ids=sample_ids).logits,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["skip-in-kv-shared", "skip-before-kv-shared", "odd-widths",
                                  "skip-in-sparse-and-shared", "skip-middle-blocks"])
def test_elastic_equals_sliced_checkpoint_text_layout(full_text, tiny_text, tmp_path, sample_ids, name):
    skipped, widths = CONFIGS[name]
    submodel = build_submodel(full_text.model, _plan(full_text, skipped, widths))
    slice_checkpoint(tiny_text, SliceConfig(name=name, layers_skipped=skipped, ffn_widths=widths), tmp_path / "out")
    sliced = load_model(tmp_path / "out").model
    with torch.no_grad():
        torch.testing.assert_close(submodel(input_ids=sample_ids).logits, sliced(input_ids=sample_ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_bfloat16_difference_is_small(tiny_multimodal, tmp_path, sample_ids):
    skipped, widths = CONFIGS["skip-in-kv-shared"]
    full = load_model(tiny_multimodal, dtype="bfloat16")
    submodel = build_submodel(full.model, _plan(full, skipped, widths))
    slice_checkpoint(tiny_multimodal, SliceConfig(name="b", layers_skipped=skipped, ffn_widths=widths), tmp_path / "o")
    sliced = load_model(tmp_path / "o", dtype="bfloat16").model
    with torch.no_grad():
        difference = (submodel(input_ids=sample_ids).logits.float() - sliced(input_ids=sample_ids).logits.float())
    scale = sliced(input_ids=sample_ids).logits.float().abs().max()
    assert difference.abs().max() <= 0.02 * scale, difference.abs().max()


def _storages(module: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def test_submodel_allocates_no_parameter_storage(full_multimodal):
    full_storages = _storages(full_multimodal.model)
    full_bytes = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in full_multimodal.model.parameters()}
    for skipped, widths in CONFIGS.values():
        submodel = build_submodel(full_multimodal.model, _plan(full_multimodal, skipped, widths))
        assert _storages(submodel) <= full_storages
        del submodel
        gc.collect()
    after = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in full_multimodal.model.parameters()}
    assert after == full_bytes  # dropping submodels freed nothing of the full model


def test_switching_configs_leaves_full_model_intact(full_multimodal, sample_ids):
    with torch.no_grad():
        before = full_multimodal.model(input_ids=sample_ids).logits.clone()
        for skipped, widths in CONFIGS.values():
            build_submodel(full_multimodal.model, _plan(full_multimodal, skipped, widths))(input_ids=sample_ids)
        assert torch.equal(full_multimodal.model(input_ids=sample_ids).logits, before)
