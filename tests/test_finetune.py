"""Nested LoRA fine-tuning: a slice's loss trains the full adapter's tensors (its kept rows and
columns, nothing else); a nested run trains only valid slices and its adapter is cut by
`slice --adapter` and loaded by PEFT; a run killed with SIGKILL resumes from its saved state to
the adapter an uninterrupted run makes; bad input is one line, nothing written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_checkpoint
from matlab.cli import app
from matlab.core.elastic import build_submodel
from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.plan import SlicePlan
from matlab.slice_config import SliceConfig, dump_slice_config, load_slice_config
from matlab.slice_config.validation import check_slice_config
from matlab.training import nested
from matlab.training.nested import NestedLora

from helpers import SLICE_CASES

runner = CliRunner()
SKIPPED, WIDTHS = SLICE_CASES["skip-before-kv-shared"]


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "deploy.yaml"
    path.write_text(dump_slice_config(SliceConfig(name="deploy", layers_skipped=tuple(SKIPPED),
                                                  ffn_widths=tuple(WIDTHS))))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(" ".join(f"item {n} is kept in box {n % 7} ." for n in range(400)))
    return path


def _finetune(checkpoint, data: Path, out: Path, *extra: str, steps: int = 12) -> list[str]:
    return ["finetune", str(checkpoint), "--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--seq-len", "24", "--lora-rank", "4", "--save-every", "3", "--seed", "1", *extra]


def test_a_slice_step_trains_exactly_the_adapter_rows_and_columns_the_slice_keeps(tiny_text, sample_ids):
    loaded = load_model(tiny_text)
    plan = SlicePlan.build(SliceConfig(name="deploy", layers_skipped=tuple(SKIPPED), ffn_widths=tuple(WIDTHS)),
                           loaded.facts)
    torch.manual_seed(0)
    lora = NestedLora(loaded.model, loaded.facts, rank=4, alpha=8)
    with torch.no_grad():  # PEFT starts B at zero, which passes no gradient to A
        for parameter in lora.adapter.values():
            parameter.copy_(torch.randn(parameter.shape) * 0.05)
    lora(plan, input_ids=sample_ids, labels=sample_ids).loss.backward()
    position = plan.new_index[1]  # kept layer 1, cut to its FFN width
    width = plan.ffn_widths[position]
    gate_b = lora.adapter["model.layers.1.mlp.gate_proj.lora_B.default.weight"].grad
    down_a = lora.adapter["model.layers.1.mlp.down_proj.lora_A.default.weight"].grad
    assert gate_b[:width].abs().sum() > 0 and down_a[:, :width].abs().sum() > 0
    assert gate_b[width:].abs().sum() == 0 and down_a[:, width:].abs().sum() == 0
    assert lora.adapter[f"model.layers.{SKIPPED[0]}.self_attn.q_proj.lora_A.default.weight"].grad is None
    # The oracle: the adapter merged into the full model, then sliced, gives the same logits.
    merged = {name: parameter.detach().clone() for name, parameter in loaded.model.named_parameters()}
    for name, parameter in lora.adapter.items():
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            merged[module + ".weight"] += 2.0 * lora.adapter[f"{module}.lora_B.default.weight"].detach() @ \
                parameter.detach()
    oracle = load_model(tiny_text).model
    oracle.load_state_dict(merged, strict=False)
    with torch.no_grad():
        expected = build_submodel(oracle, plan)(input_ids=sample_ids).logits
        got = lora(plan, input_ids=sample_ids).logits
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_nested_run_trains_valid_slices_and_its_adapter_slices_and_loads(tiny_text, data_file, slice_file, tmp_path,
                                                                          monkeypatch, sample_ids):
    trained = []
    call = nested.NestedLora.__call__
    monkeypatch.setattr(nested.NestedLora, "__call__",
                        lambda self, plan, **inputs: trained.append(plan) or call(self, plan, **inputs))
    out = tmp_path / "adapter"
    result = runner.invoke(app, _finetune(tiny_text, data_file, out, "--config", str(slice_file)))
    assert result.exit_code == 0, result.output
    facts = facts_from_checkpoint(tiny_text).text_only()
    assert len(trained) == 12 and len({plan.submodel_id for plan in trained}) > 1
    for plan in trained:  # every step's slice passes what `matformer validate` checks
        assert not [p for p in check_slice_config(plan.config, facts, "step") if p.severity == "error"]
    assert not (tmp_path / "adapter.partial").exists()
    sliced = tmp_path / "sliced"
    sliced_run = runner.invoke(app, ["slice", str(tiny_text), "--config", str(slice_file), "--out", str(sliced),
                                     "--adapter", str(out)])
    assert sliced_run.exit_code == 0, sliced_run.output
    from peft import PeftModel
    from transformers import Gemma3nForCausalLM

    peft_model = PeftModel.from_pretrained(Gemma3nForCausalLM.from_pretrained(sliced, dtype=torch.float32),
                                           sliced / "adapter").eval()
    elastic = select_submodel(load_model(tiny_text, adapter=out), load_slice_config(slice_file)).model
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=sample_ids).logits, elastic(input_ids=sample_ids).logits,
                                   atol=2e-4, rtol=1e-4)
    assert any(load_file(out / "adapter_model.safetensors")[key].abs().sum() > 0
               for key in load_file(out / "adapter_model.safetensors") if "lora_B" in key)


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_adapter(tiny_text, data_file, slice_file, tmp_path):
    arguments = _finetune(tiny_text, data_file, tmp_path / "killed", "--config", str(slice_file), steps=24)
    state = tmp_path / "killed.partial" / "state.pt"
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "matlab", *arguments], stdout=subprocess.DEVNULL,
                                   stderr=stderr, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not state.exists():
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "no state was saved"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed").exists(), "the run ended before the kill: nothing was tested"
    saved = state.read_bytes()
    other = runner.invoke(app, [*arguments, "--learning-rate", "0.5"])  # another run's settings: refused, kept
    _one_line(other, "holds an interrupted run with different learning_rate")
    assert state.read_bytes() == saved
    resumed = runner.invoke(app, arguments)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed at step" in resumed.output
    whole = runner.invoke(app, _finetune(tiny_text, data_file, tmp_path / "whole", "--config", str(slice_file), steps=24))
    assert whole.exit_code == 0, whole.output
    got, expected = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("killed", "whole"))
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)


def _one_line(result, message: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_input_is_one_line_and_nothing_is_written(tiny_text, data_file, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(dump_slice_config(SliceConfig(name="wrong", layers_skipped=(40,), ffn_widths=128)))
    cases = [
        (_finetune(tiny_text, tmp_path / "missing.txt", out), "--data"),
        (_finetune(tiny_text, empty, out), "no text in it"),
        (_finetune(tiny_text, data_file, out, "--config", str(wrong)), str(wrong)),
        (_finetune(tiny_text, data_file, out, "--config", str(wrong), "--full-only"), "--full-only"),
        (_finetune(tiny_text, data_file, tiny_text / "adapter"), "inside the input"),
        (_finetune(tiny_text, data_file, out, steps=0), "--steps 0"),
        (_finetune(tiny_text, data_file, out, "--full-share", "1.5"), "--full-share"),
    ]
    for arguments, message in cases:
        _one_line(runner.invoke(app, arguments), message)
        assert not out.exists() and not (tmp_path / "out.partial").exists(), arguments
    assert not (tiny_text / "adapter").exists() and not (tiny_text / "adapter.partial").exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line(runner.invoke(app, _finetune(tiny_text, data_file, out)), "--force")
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "out.partial").exists()


def test_new_people_are_named_by_words_nano_knows_and_no_old_person_is_new():
    from matlab.core.loading import load_tokenizer
    from matlab.io.resolve import resolve_checkpoint
    from matlab.nano.world import make_world, new_people_world

    tokenizer = load_tokenizer(resolve_checkpoint("nano"))
    world = new_people_world()
    assert len(world.people) == 64 and not set(world.people) & set(make_world().people)
    for person in world.people:
        assert tokenizer.unk_token_id not in tokenizer(person, add_special_tokens=False).input_ids, person


def test_bench_new_facts_writes_a_suite_with_one_question_per_new_fact_and_interleaves_replay(tmp_path):
    import json

    from matlab.harness.suite import load_suite
    from matlab.nano.world import new_people_world

    result = CliRunner().invoke(app, ["bench", "new-facts", "--out", str(tmp_path), "--replay", "3"])
    assert result.exit_code == 0, result.output
    suite = load_suite(tmp_path / "suite.yaml")
    assert [task.name for task in suite.tasks] == ["new_facts"]
    questions = [json.loads(line) for line in (tmp_path / "facts.jsonl").read_text().splitlines()]
    world = new_people_world()
    assert len(questions) == len(world.people) * len(next(iter(world.facts.values())))
    for question in questions:  # every answer is the new person's own fact
        assert question["choices"][question["answer"]] == world.facts[question["person"]][question["attribute"]]
    texts = [json.loads(line)["text"] for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    new_people = [any(person in text for person in world.people) for text in texts]
    assert new_people[:6] == [True, False] * 3 and all(new_people[6:])  # 3 replayed documents interleaved
