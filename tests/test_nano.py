"""The nano model's world, tokenizer, configs, evaluation data and MatFormer training step."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import Gemma3nForCausalLM

from matlab.arch.facts import facts_from_config
from matlab.core.loading import load_model
from matlab.nano.configs import nano_configs
from matlab.nano.evals import write_eval_data
from matlab.nano.model import nano_config, nano_facts, nested_e2b
from matlab.nano.tokenizer import build_tokenizer
from matlab.nano.train import TrainSettings, submodel_loss, train_nano
from matlab.nano.world import ATTRIBUTES, EVAL_FRAMES, TRAIN_FRAMES, document, fact_questions, make_world
from matlab.plan import SlicePlan
from matlab.slice_config import dump_slice_config
from matlab.slice_config.validation import check_slice_config

from helpers import tiny_text_model

REPO = Path(__file__).resolve().parent.parent


def test_world_is_deterministic_and_consistent():
    world = make_world(64, seed=0)
    assert world == make_world(64, seed=0) and world != make_world(64, seed=1)
    text = " ".join(document(world, random.Random(0)) for _ in range(50))
    for person in world.people[:10]:
        city = world.facts[person]["city"]
        assert f"{person} lives in {ATTRIBUTES['city'][0]}" not in text or city == ATTRIBUTES["city"][0]
    tokenizer = build_tokenizer(world.vocabulary())
    assert tokenizer.unk_token_id not in tokenizer(text).input_ids  # a closed vocabulary


def test_eval_questions_use_only_held_out_frames():
    world = make_world(32)
    questions = fact_questions(world)
    assert len(questions) == 32 * len(ATTRIBUTES)
    assert set(EVAL_FRAMES).isdisjoint(TRAIN_FRAMES)
    train_text = " ".join(document(world, random.Random(s)) for s in range(200))
    for question in questions[:40]:
        assert question["question"] not in train_text
        assert question["choices"][question["answer"]] == world.facts[question["person"]][question["attribute"]]


def test_committed_eval_data_is_the_generator_output(tmp_path):
    write_eval_data(make_world(), tmp_path)
    for name in ("facts.jsonl", "arithmetic.jsonl", "heldout.jsonl"):
        assert (tmp_path / name).read_text() == (REPO / "evals" / "nano" / name).read_text()


def test_nano_configs_are_valid_and_committed():
    facts = nano_facts(nano_config(512))
    configs = nano_configs()
    assert len(configs) >= 16 and configs["nano-e2b"] == nested_e2b()
    committed = sorted((REPO / "slice_configs" / "nano").glob("*.yaml"))
    assert [path.stem for path in committed] == sorted(configs)
    for stem, config in configs.items():
        problems = check_slice_config(config, facts, stem)
        assert not [p for p in problems if p.severity == "error"], problems
        # The committed file is exactly the generator's config, written the way the CLI writes configs.
        expected = dump_slice_config(config.model_copy(update={"base": "nano"}))
        assert (REPO / "slice_configs" / "nano" / f"{stem}.yaml").read_text() == expected, stem
    assert facts.kv_producers == {"sliding_attention": 8, "full_attention": 9}
    assert nested_e2b().layers_skipped == (10, 11, 12, 13, 14)


def test_submodel_step_updates_only_the_nested_weights():
    model = tiny_text_model(init_seed=0, perturb_seed=1)  # at init AltUp's output scale is zero: no PLE gradients
    facts = facts_from_config({**model.config.to_dict(), "model_type": "gemma3n_text"}, "tiny")
    plan = SlicePlan.build(nested_e2b().model_copy(update={"layers_skipped": (10, 11, 12), "ffn_widths": 96}), facts)
    loss = submodel_loss(model, plan, torch.randint(4, 512, (2, 12)))
    loss.backward()
    layers = model.model.layers
    assert layers[10].mlp.gate_proj.weight.grad is None  # skipped layer: untouched
    kept_grad = layers[0].mlp.gate_proj.weight.grad
    assert kept_grad[:96].abs().sum() > 0 and kept_grad[96:].abs().sum() == 0
    assert layers[0].mlp.down_proj.weight.grad[:, 96:].abs().sum() == 0
    ple_grad = model.model.embed_tokens_per_layer.weight.grad
    block = model.config.hidden_size_per_layer_input
    assert ple_grad[:, 10 * block:13 * block].abs().sum() == 0 and ple_grad[:, :block].abs().sum() > 0


def test_train_and_save_round_trip(tmp_path):
    from matlab.nano.checkpoint import CURVE_NAME, save_nano

    settings = TrainSettings(steps=3, batch_size=2, sequence_length=16, people=16)
    result = train_nano(settings)
    assert [entry["step"] for entry in result.curve] == [0, 1, 2]
    save_nano(result, settings, tmp_path / "nano", command="matformer train-nano --steps 3")
    loaded = load_model(tmp_path / "nano")
    assert loaded.tokenizer is not None and loaded.facts.num_layers == 20
    card = (tmp_path / "nano" / "README.md").read_text()
    assert "matformer train-nano --steps 3" in card and "seed: 0" in card
    assert json.loads((tmp_path / "nano" / CURVE_NAME).read_text())["settings"]["steps"] == 3
    again = train_nano(settings)
    assert [e["loss"] for e in again.curve] == [e["loss"] for e in result.curve]  # seeded: reproducible


def test_frozen_names_keep_their_rows_and_every_hook_runs():
    settings = TrainSettings(steps=4, batch_size=2, sequence_length=16, people=16, frozen_names=True)
    torch.manual_seed(settings.seed)
    initial = Gemma3nForCausalLM(nano_config(len(build_tokenizer(make_world(16).vocabulary()))))
    seen = []
    result = train_nano(settings, every=2, on_every=lambda step, run: seen.append((step, run.model.training)))
    assert seen == [(2, False), (4, False)]
    ids = torch.tensor(result.tokenizer.convert_tokens_to_ids(list(result.world.people)))
    others = torch.tensor(result.tokenizer.convert_tokens_to_ids(["lives", "baker", "plus"]))
    for name in ("embed_tokens", "embed_tokens_per_layer"):
        trained = getattr(result.model.model, name).weight.detach()
        start = getattr(initial.model, name).weight.detach()
        assert torch.equal(trained[ids], start[ids])  # names: exactly their random initial rows
        assert not torch.equal(trained[others], start[others])  # other words trained


def test_capacity_bench_scores_as_lm_eval_does(tmp_path):
    """The capacity benchmark's in-process fact scorer gives lm-evaluation-harness's `acc`
    on the shipped nano model, question for question."""
    from matlab.bench.nano_capacity import fact_accuracy
    from matlab.core.submodel import select_submodel
    from matlab.harness.evaluate import evaluate_submodel
    from matlab.harness.suite import load_suite

    suite = tmp_path / "facts.yaml"
    suite.write_text(f"name: facts\ntask_dirs: [{REPO / 'evals' / 'nano'}]\ntasks:\n  - name: nano_facts\n"
                     "    metric: acc\n", encoding="utf-8")
    loaded = load_model("nano")
    limit = 120
    score, = evaluate_submodel(select_submodel(loaded, None), load_suite(suite), limit=limit)
    ours = fact_accuracy(loaded.model, loaded.tokenizer, fact_questions(make_world())[:limit])
    assert score.samples == limit and ours == pytest.approx(score.value, abs=1e-9)
