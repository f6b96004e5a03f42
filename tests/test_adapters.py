"""Slicing a PEFT LoRA adapter: merging the sliced adapter into the sliced model gives, byte for
byte in float32, the slice of the model merged with the full adapter; PEFT loads it on the
sliced checkpoint; what cannot be cut is one line and nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from matlab.errors import InputError
from matlab.slice_config import SliceConfig
from matlab.slicing.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, slice_adapter
from matlab.slicing.slicer import slice_checkpoint

from helpers import SLICE_CASES

TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _load(directory: Path, multimodal: bool):
    from transformers import Gemma3nForCausalLM, Gemma3nForConditionalGeneration

    kind = Gemma3nForConditionalGeneration if multimodal else Gemma3nForCausalLM
    return kind.from_pretrained(directory, dtype=torch.float32).eval()


def _train_like_adapter(base: Path, out: Path, multimodal: bool, **lora) -> Path:
    """A LoRA adapter on `base` with random A and B (PEFT starts B at zero, which would test
    nothing). Their entries are multiples of 1/64 below 1/8, so every B @ A product and sum is
    exact in float32 whatever order a BLAS kernel takes (a narrower A may get another kernel):
    then merge-then-slice and slice-then-merge can be compared byte for byte."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_load(base, multimodal), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **lora))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randint(-8, 9, parameter.shape, generator=generator) / 64)
    model.save_pretrained(out)
    return out


def _merged(model_dir: Path, adapter: Path, multimodal: bool):
    from peft import PeftModel

    return PeftModel.from_pretrained(_load(model_dir, multimodal), adapter).merge_and_unload()


@pytest.fixture(scope="module")
def text_adapter(tiny_text, tmp_path_factory) -> Path:
    return _train_like_adapter(tiny_text, tmp_path_factory.mktemp("adapter") / "lora", multimodal=False)


@pytest.mark.parametrize("name", ["skip-before-kv-shared", "odd-widths", "skip-in-sparse-and-shared"])
def test_merge_then_slice_equals_slice_then_merge(tiny_text, text_adapter, tmp_path, name):
    skipped, widths = SLICE_CASES[name]
    config = SliceConfig(name=name, layers_skipped=skipped, ffn_widths=widths)
    _merged(tiny_text, text_adapter, multimodal=False).save_pretrained(tmp_path / "merged")
    slice_checkpoint(tmp_path / "merged", config, tmp_path / "merged-sliced")
    slice_checkpoint(tiny_text, config, tmp_path / "sliced")
    result = slice_adapter(text_adapter, tiny_text, config, tmp_path / "sliced-lora")
    in_skipped = [name for name in load_file(text_adapter / ADAPTER_WEIGHTS) if int(name.split(".")[4]) in skipped]
    assert result.tensors_dropped == len(in_skipped) > 0 and result.rank == 4

    expected = {name: tensor for shard in sorted((tmp_path / "merged-sliced").glob("*.safetensors"))
                for name, tensor in load_file(shard).items()}
    assert expected
    got = _merged(tmp_path / "sliced", tmp_path / "sliced-lora", multimodal=False).state_dict()
    for tensor_name, tensor in expected.items():
        assert torch.equal(got[tensor_name], tensor), tensor_name


def test_multimodal_adapter_sliced_text_only_loads_on_the_causal_lm(tiny_multimodal, tmp_path, sample_ids):
    from peft import PeftModel

    skipped, widths = SLICE_CASES["skip-in-kv-shared"]
    config = SliceConfig(name="mm", layers_skipped=skipped, ffn_widths=widths)
    adapter = _train_like_adapter(tiny_multimodal, tmp_path / "lora", multimodal=True)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "sliced", text_only=True)
    slice_adapter(adapter, tiny_multimodal, config, tmp_path / "sliced-lora", text_only=True)
    names = load_file(tmp_path / "sliced-lora" / ADAPTER_WEIGHTS)
    assert all(name.startswith("base_model.model.model.layers.") for name in names)
    assert max(int(name.split(".")[4]) for name in names) == 15 - len(skipped) - 1  # renumbered
    assert json.loads((tmp_path / "sliced-lora" / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == \
        str(tmp_path / "sliced-lora")

    peft_model = PeftModel.from_pretrained(_load(tmp_path / "sliced", multimodal=False), tmp_path / "sliced-lora")
    loaded = {name for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(names)
    with torch.no_grad():
        with_adapter = peft_model(input_ids=sample_ids).logits
        with peft_model.disable_adapter():
            without = peft_model(input_ids=sample_ids).logits
    assert (with_adapter - without).abs().max() > 1e-3  # the adapter is applied


def _refused(adapter: Path, base: Path, out: Path, words: str) -> None:
    with pytest.raises(InputError, match=words):
        slice_adapter(adapter, base, SliceConfig(name="s", layers_skipped=[10], ffn_widths=128), out)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_dora_and_other_adapter_types_are_refused(tiny_text, tmp_path):
    from peft import IA3Config, get_peft_model

    dora = _train_like_adapter(tiny_text, tmp_path / "dora", multimodal=False, use_dora=True)
    _refused(dora, tiny_text, tmp_path / "out", "use_dora is True: this adapter cannot be sliced")
    get_peft_model(_load(tiny_text, False), IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"])
                   ).save_pretrained(tmp_path / "ia3")
    _refused(tmp_path / "ia3", tiny_text, tmp_path / "out", "peft_type IA3: only LoRA adapters")


def test_adapter_for_another_base_is_refused(tiny_text, text_adapter, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / ADAPTER_CONFIG).write_text((text_adapter / ADAPTER_CONFIG).read_text())
    tensors = load_file(text_adapter / ADAPTER_WEIGHTS)
    key = next(name for name in tensors if name.endswith("gate_proj.lora_A.weight"))
    tensors[key] = torch.zeros(4, 96)  # hidden 96, not 64
    save_file(tensors, other / ADAPTER_WEIGHTS)
    _refused(other, tiny_text, tmp_path / "out", "does not fit .* an adapter for another base model")

    renamed = {name.replace("mlp.gate_proj", "mlp.gate"): tensor for name, tensor in load_file(
        text_adapter / ADAPTER_WEIGHTS).items()}
    save_file(renamed, other / ADAPTER_WEIGHTS)
    _refused(other, tiny_text, tmp_path / "out", "has no 2-D weight of: an adapter for another base model")


def test_embedding_lora_and_pickled_weights_are_refused(tiny_text, text_adapter, tmp_path):
    folder = tmp_path / "embedding"
    folder.mkdir()
    (folder / ADAPTER_CONFIG).write_text((text_adapter / ADAPTER_CONFIG).read_text())
    save_file({"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 512)}, folder / ADAPTER_WEIGHTS)
    _refused(folder, tiny_text, tmp_path / "out", "is not a LoRA A/B weight of a linear module")
    (folder / ADAPTER_WEIGHTS).rename(folder / "adapter_model.bin")
    _refused(folder, tiny_text, tmp_path / "out", "safe_serialization=True")
    _refused(tmp_path / "nothing", tiny_text, tmp_path / "out", "no adapter_config.json")


def test_slice_command_writes_model_and_adapter_together(tiny_text, text_adapter, tmp_path):
    from typer.testing import CliRunner

    from matlab.cli import app

    config = tmp_path / "slice.yaml"
    config.write_text("name: s\nlayers_skipped: [3]\nffn_widths: 128\n")
    result = CliRunner().invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out", str(tmp_path / "out"),
                                      "--adapter", str(text_adapter)])
    assert result.exit_code == 0, result.output
    assert "LoRA rank 4" in result.output
    assert (tmp_path / "out" / "adapter" / ADAPTER_WEIGHTS).is_file() and (tmp_path / "out" / "config.json").is_file()

    (text_adapter.parent / "dora").mkdir()
    refused = CliRunner().invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out",
                                       str(tmp_path / "out2"), "--adapter", str(text_adapter.parent / "dora")])
    assert refused.exit_code != 0 and "no adapter_config.json" in refused.output
    assert not (tmp_path / "out2").exists()
    with_runtime = CliRunner().invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out",
                                            str(tmp_path / "out3"), "--adapter", str(text_adapter),
                                            "--runtime", "mlx-lm"])
    assert with_runtime.exit_code != 0 and "adapters are sliced for transformers" in with_runtime.output
    assert not (tmp_path / "out3").exists()


def test_elastic_run_with_adapter_equals_sliced_checkpoint_with_sliced_adapter(tiny_multimodal, tmp_path,
                                                                                sample_ids):
    from matlab.core.loading import load_model
    from matlab.core.submodel import select_submodel

    skipped, widths = SLICE_CASES["skip-before-kv-shared"]
    config = SliceConfig(name="s", layers_skipped=skipped, ffn_widths=widths)
    adapter = _train_like_adapter(tiny_multimodal, tmp_path / "lora", multimodal=True)
    slice_checkpoint(tiny_multimodal, config, tmp_path / "sliced", text_only=True, adapter=adapter)
    deployed = _merged(tmp_path / "sliced", tmp_path / "sliced" / "adapter", multimodal=False)
    elastic = select_submodel(load_model(tiny_multimodal, adapter=adapter), config).model
    plain = select_submodel(load_model(tiny_multimodal), config).model
    with torch.no_grad():
        expected, got, without = (model(input_ids=sample_ids).logits for model in (deployed, elastic, plain))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (without - expected).abs().max() > 1e-2  # the adapter changed the model


def test_sweep_and_eval_take_an_adapter_elastic_equals_materialized(tiny_text, text_adapter, tmp_path):
    """`sweep --adapter` evaluates slices of the fine-tuned model: the elastic run's scores equal
    the materialized run's (each slice written with its sliced adapter) and `eval --adapter`'s,
    and the run records the adapter in its identity (the adapter changing the model is shown by
    the elastic test above)."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from matlab.cli import app

    config = tmp_path / "s.yaml"
    config.write_text("name: s\nlayers_skipped: [11]\nffn_widths: 128\n")
    common = ["--configs", str(config), "--suite", "nano", "--limit", "4", "--latency-rounds", "1"]
    runs = {}
    for name, extra in {"elastic": ["--adapter", str(text_adapter)],
                        "materialized": ["--adapter", str(text_adapter), "--materialize"]}.items():
        result = CliRunner().invoke(app, ["sweep", str(tiny_text), "--out", str(tmp_path / name), *common, *extra])
        assert result.exit_code == 0, result.output
        runs[name] = pd.read_json(tmp_path / name / "results.jsonl", lines=True).sort_values(["task", "metric"])
    assert list(runs["elastic"]["value"]) == pytest.approx(list(runs["materialized"]["value"]), rel=1e-4)
    identity = json.loads((tmp_path / "elastic" / "run.json").read_text())["identity"]
    assert identity["adapter"]["path"] == str(text_adapter) and len(identity["adapter"]["sha256"]) == 64
    again = CliRunner().invoke(app, ["sweep", str(tiny_text), "--out", str(tmp_path / "elastic"), *common])
    assert again.exit_code != 0 and "adapter" in again.stderr  # another identity: refused, nothing mixed

    evaluated = CliRunner().invoke(app, ["eval", str(tiny_text), "--suite", "nano", "--limit", "4", "--config",
                                         str(config), "--adapter", str(text_adapter), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    scores = {(s["task"], s["metric"]): s["value"] for s in json.loads(evaluated.stdout)["scores"]}
    for row in runs["elastic"].itertuples():
        assert scores[(row.task, row.metric)] == pytest.approx(row.value, rel=1e-6)
