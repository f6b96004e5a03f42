"""Supporting another nested architecture is one family: a toy family (Gemma 3n's layout under
other tensor names and another model type) is registered and sliced by the unchanged slicer."""

from __future__ import annotations

import json
import re

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.errors import CheckpointError, SliceConfigError
from matlab.families import Family, register_family, unregister_family
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

RENAMES = [("model.", "decoder."), ("layers.", "blocks."), ("mlp.gate_proj", "ffn.w_gate"),
           ("mlp.up_proj", "ffn.w_up"), ("mlp.down_proj", "ffn.w_down"),
           ("embed_tokens_per_layer", "per_layer_embed"), ("per_layer_model_projection", "per_layer_proj")]


def toy_name(name: str) -> str:
    for old, new in RENAMES:
        name = name.replace(old, new)
    return name


class ToyFamily(Family):
    """The whole family: names, cut axes and blocks; every rule else is the base class's."""

    name = "toy"
    text_model_type = "toy_matformer"
    text_prefix = "decoder."
    layer_tensor = re.compile(r"blocks\.(\d+)\.(.+)")
    block_size_key = "hidden_size_per_layer_input"
    ffn_cuts = {"ffn.w_gate.weight": 0, "ffn.w_up.weight": 0, "ffn.w_down.weight": 1}
    layer_blocks = {"per_layer_embed.weight": 1, "per_layer_proj.weight": 0}
    embedding_groups = {"per_layer_embed.": "ple", "embed_tokens.": "embeddings"}
    ple_table = "per_layer_embed.weight"


@pytest.fixture()
def toy_checkpoint(tiny_text, tmp_path):
    family = register_family(ToyFamily())
    directory = tmp_path / "toy"
    directory.mkdir()
    tensors = {}
    for path in sorted(tiny_text.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            tensors.update({toy_name(name): handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    save_file(tensors, directory / "model.safetensors")
    config = json.loads((tiny_text / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "toy_matformer"}))
    yield directory
    unregister_family(family)


def test_toy_family_slices_like_gemma(tiny_text, toy_checkpoint, tmp_path):
    config = SliceConfig(name="c", layers_skipped=[2, 10, 11], ffn_widths=[96, 128, 256] * 4)
    gemma = slice_checkpoint(tiny_text, config, tmp_path / "gemma")
    toy = slice_checkpoint(toy_checkpoint, config, tmp_path / "toy-out")
    assert toy.params.effective_params == gemma.params.effective_params
    assert toy.params.ple_params == gemma.params.ple_params > 0
    with safe_open(next((tmp_path / "gemma").glob("*.safetensors")), framework="pt") as expected:
        names = [name for name in expected.keys() if name.startswith("model.")]  # noqa: SIM118
        reference = {toy_name(name): expected.get_tensor(name) for name in names}
    written = {}
    for path in (tmp_path / "toy-out").glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            written.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    assert set(written) == set(reference) and "decoder.blocks.11.ffn.w_down.weight" in written
    assert all(written[name].equal(reference[name]) for name in reference)
    sliced = json.loads((tmp_path / "toy-out" / "config.json").read_text())
    assert sliced["model_type"] == "toy_matformer" and sliced["num_hidden_layers"] == 12
    assert sliced["num_kv_shared_layers"] == 3 and len(sliced["layer_types"]) == 12


def test_toy_family_validates_with_its_own_rules(toy_checkpoint):
    facts = facts_from_checkpoint(toy_checkpoint)
    assert facts.family.name == "toy" and facts.kv_producers == {"sliding_attention": 8, "full_attention": 9}
    with pytest.raises(SliceConfigError, match="layer 9 is the KV producer of the full_attention layers 14"):
        SlicePlan.build(SliceConfig(name="c", layers_skipped=[9], ffn_widths=128), facts)
    report = count_parameters(inventory_from_checkpoint(toy_checkpoint), facts)
    assert report.embedding_params > 0 and report.effective_params < report.text_params


def test_unknown_model_type_names_the_known_ones(toy_checkpoint, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'; MatFormer Lab handles model types .*'toy_matformer'"):
        facts_from_checkpoint(tmp_path)
