"""The core's loader: transformers-exact, text tensors only."""

from __future__ import annotations

import pytest
import torch

import matlab.core.loading as loading
from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.errors import CheckpointError
from matlab.slice_config import SliceConfig


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loader_matches_transformers(tiny_multimodal, sample_ids, dtype):
    from transformers import Gemma3nForConditionalGeneration

    loaded = load_model(tiny_multimodal, dtype=dtype)
    reference = Gemma3nForConditionalGeneration.from_pretrained(tiny_multimodal, dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=sample_ids).logits, reference(input_ids=sample_ids).logits)
    assert loaded.model.model.embed_tokens.weight.dtype == getattr(torch, dtype)


def test_text_inference_never_reads_tower_tensors(tiny_multimodal, monkeypatch):
    read: list[str] = []
    real_safe_open = loading.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

    monkeypatch.setattr(loading, "safe_open", Recording)
    load_model(tiny_multimodal)
    assert read and all(name.startswith("model.language_model.") for name in read)


def test_cpu_weights_are_file_backed_when_dtype_matches(tiny_text, sample_ids):
    loaded = load_model(tiny_text)  # the fixture is float32 on disk
    assert _in_file_mapping(loaded.model.model.embed_tokens_per_layer.weight.data_ptr(), ".safetensors")
    converted = load_model(tiny_text, dtype="bfloat16")
    assert not _in_file_mapping(converted.model.model.embed_tokens_per_layer.weight.data_ptr(), ".safetensors")


def test_ple_on_cpu_keeps_the_table_on_cpu(tiny_text):
    # The meta device stands in for an accelerator: placement is what is checked here.
    loaded = load_model(tiny_text, device="meta", ple_on_cpu=True)
    ple = loaded.model.model.embed_tokens_per_layer
    assert ple.weight.device.type == "cpu" and ple._forward_pre_hooks and ple._forward_hooks
    assert loaded.model.model.layers[0].mlp.gate_proj.weight.device.type == "meta"
    # An elastic submodel reads the same CPU-resident table and runs the rest on the device.
    submodel = select_submodel(loaded, SliceConfig(name="e2b", layers_skipped=[10, 11, 12], ffn_widths=128))
    assert submodel.model.model.embed_tokens_per_layer.full is ple
    assert submodel.model.model.layers[0].mlp.gate_proj.weight.device.type == "meta"
    assert submodel.model.model.rotary_emb.full_attention_inv_freq.device.type == "meta"
    assert load_model(tiny_text, device="meta").model.model.embed_tokens_per_layer.weight.device.type == "meta"


def _in_file_mapping(address: int, suffix: str) -> bool:
    """Whether `address` lies in a memory mapping of a file ending in `suffix` (Linux)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith(suffix):
                start, stop = (int(part, 16) for part in fields[0].split("-"))
                if start <= address < stop:
                    return True
    return False


def test_missing_text_tensor_is_named(tiny_text, tmp_path):
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_text, broken)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    del index["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(index))
    # The shard still holds the tensor; drop it from the only file that has it by rewriting.
    from safetensors.torch import load_file, save_file

    for shard in broken.glob("model-*.safetensors"):
        tensors = load_file(shard)
        if "model.norm.weight" in tensors:
            del tensors["model.norm.weight"]
            save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing text tensors \['model.norm.weight'\]"):
        load_model(broken)


def test_shapes_only_reads_no_tensor_and_costs_alike(tiny_text, monkeypatch):
    from matlab.core.loading import load_shapes
    from matlab.core.submodel import deployed_weight_bytes
    from matlab.plan import SlicePlan

    loaded = load_model(tiny_text, dtype="bfloat16")
    monkeypatch.setattr(loading, "_read_text_tensors", lambda *args: pytest.fail("load_shapes read tensors"))
    shapes = load_shapes(tiny_text, "bfloat16")
    assert all(parameter.device.type == "meta" for parameter in shapes.model.parameters())
    assert {name: (p.shape, p.dtype) for name, p in shapes.model.named_parameters()} == \
        {name: (p.shape, p.dtype) for name, p in loaded.model.named_parameters()}
    config = SliceConfig(name="e2b", layers_skipped=[10, 11, 12], ffn_widths=128)
    assert deployed_weight_bytes(shapes, SlicePlan.build(config, shapes.facts)) == \
        deployed_weight_bytes(loaded, SlicePlan.build(config, loaded.facts))
    assert shapes.tokenizer is not None and shapes.dtype == torch.bfloat16
