"""The harness gives lm-evaluation-harness's own numbers: the adapter over an elastic nano-E2B
against lm-eval's `HFLM` loading the checkpoint `matformer slice` wrote for the same config."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matlab.cli import app
from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.harness.lm import MatformerLM
from matlab.harness.suite import load_suite, local_task_configs
from matlab.slice_config import SliceConfig, load_slice_config
from matlab.slice_config.bundled import resolve_config_entry, resolve_suite

E2B = next(path for path in resolve_config_entry("nano") if path.stem == "nano-e2b")


@pytest.fixture(scope="module")
def sliced(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("parity") / "nano-e2b"
    result = CliRunner().invoke(app, ["slice", "nano", "--config", str(E2B), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def elastic():
    return select_submodel(load_model("nano"), load_slice_config(E2B))


@pytest.fixture(scope="module")
def tasks():
    configs = local_task_configs(load_suite(resolve_suite("nano")))
    configs.update(local_task_configs(load_suite(resolve_suite("nano-generate"))))
    return configs


def _reference(sliced: Path, **options):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(sliced), device="cpu", dtype="float32", batch_size=8, **options)


def _run(lm, task: dict, limit: int) -> tuple[dict, list]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_defaults=False), limit=limit,
                              log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                              torch_random_seed=0, fewshot_random_seed=0)
    name = task["task"]
    samples = sorted(results["samples"][name], key=lambda sample: sample["doc_id"])
    return results["results"][name], [sample["resps"] for sample in samples]


def test_multiple_choice_matches_hflm(sliced, elastic, tasks):
    ours, our_samples = _run(MatformerLM(elastic, batch_size=8), tasks["nano_facts"], limit=60)
    theirs, their_samples = _run(_reference(sliced), tasks["nano_facts"], limit=60)
    assert ours["acc,none"] == theirs["acc,none"]
    flat = [float(value) for sample in our_samples for (value, _), in sample]
    expected = [float(value) for sample in their_samples for (value, _), in sample]
    assert flat == pytest.approx(expected, abs=1e-5) and len(flat) > 60 * 10  # every choice's log-likelihood


@pytest.mark.parametrize("policy, add_bos_token", [("lm-eval", None), ("single", False)])
def test_rolling_perplexity_matches_hflm_under_each_bos_policy(sliced, elastic, tasks, policy, add_bos_token):
    ours, _ = _run(MatformerLM(elastic, batch_size=8, bos_policy=policy), tasks["nano_heldout"], limit=12)
    theirs, _ = _run(_reference(sliced, add_bos_token=add_bos_token), tasks["nano_heldout"], limit=12)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours[metric] == pytest.approx(theirs[metric], rel=1e-6)


def test_the_two_bos_policies_differ_as_documented(elastic, tasks):
    """The nano tokenizer adds BOS itself: lm-eval's default scores a second BOS in each window."""
    double, _ = _run(MatformerLM(elastic, bos_policy="lm-eval"), tasks["nano_heldout"], limit=12)
    single, _ = _run(MatformerLM(elastic, bos_policy="single"), tasks["nano_heldout"], limit=12)
    assert single["word_perplexity,none"] < double["word_perplexity,none"]


def test_generation_with_stop_sequences_matches_hflm(sliced, elastic, tasks):
    ours, our_samples = _run(MatformerLM(elastic, batch_size=8), tasks["nano_facts_generate"], limit=40)
    theirs, their_samples = _run(_reference(sliced), tasks["nano_facts_generate"], limit=40)
    assert our_samples == their_samples  # the generated strings, exactly
    assert ours["exact_match,strip"] == theirs["exact_match,strip"] > 0.3
    assert not any("." in text for sample in our_samples for text in sample[0])  # cut at the stop sequence


class _Request:
    def __init__(self, *args):
        self.args = args


def test_batched_generation_equals_unbatched_and_stops_early(elastic, tasks):
    import json

    rows = [json.loads(line) for line in Path(tasks["nano_facts_generate"]["dataset_kwargs"]["data_files"]["test"])
            .read_text().splitlines()[:12]]
    options = {"until": ["."], "max_gen_toks": 40, "do_sample": False}
    requests = [_Request(row["question"], options) for row in rows]
    batched = MatformerLM(elastic, batch_size=6).generate_until(requests)
    one_by_one = MatformerLM(elastic, batch_size=1).generate_until(requests)
    assert batched == one_by_one
    calls = []
    handle = elastic.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        MatformerLM(elastic, batch_size=1).generate_until(requests[:1])
        stopped = len(calls)
        calls.clear()
        MatformerLM(elastic, batch_size=1).generate_until([_Request(rows[0]["question"],
                                                                    {**options, "until": ["never seen"]})])
        unstopped = len(calls)
    finally:
        handle.remove()
    assert stopped < 10 and unstopped > stopped  # the stop sequence ended it well before max_gen_toks (40)


def test_round_robin_latency_orders_configs_on_a_busy_machine():
    """A 20-layer and a 2-layer submodel, measured while two busy loops load both cores: the
    round-robin medians still put the shallow one ahead."""
    from matlab.core.latency import round_robin_latency

    loaded = load_model("nano")
    shallow = SliceConfig(name="shallow", layers_skipped=[*range(8), *range(10, 20)], ffn_widths=512)
    models = {"deep": loaded.model, "shallow": select_submodel(loaded, shallow).model}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.2)
        measured = round_robin_latency(models, prompt_tokens=32, decode_tokens=8, rounds=5)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert measured["shallow"].decode_tokens_per_s > measured["deep"].decode_tokens_per_s
    assert measured["shallow"].prefill_tokens_per_s > measured["deep"].prefill_tokens_per_s
    deep = measured["deep"]
    assert deep.decode_tokens_per_s_min <= deep.decode_tokens_per_s <= deep.decode_tokens_per_s_max
    assert deep.rounds == 5 and deep.threads >= 1 and deep.device == "cpu"


def test_bos_policy_is_an_option_named_in_errors(tmp_path):
    result = CliRunner().invoke(app, ["eval", "nano", "--suite", "nano", "--limit", "1", "--bos-policy", "double"])
    assert result.exit_code == 2 and "--bos-policy double: choose one of lm-eval, single" in result.stderr
    single = CliRunner().invoke(app, ["eval", "nano", "--suite", "nano", "--limit", "4", "--bos-policy", "single",
                                      "--json"])
    assert single.exit_code == 0, single.output
    assert '"bos_policy": "single"' in single.stdout


def test_lm_evals_own_bars_stay_off_beside_the_workbenchs_display(elastic, tasks, capfd, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # they are off without the variable's help
    _run(MatformerLM(elastic, batch_size=8), tasks["nano_facts"], limit=4)
    _run(MatformerLM(elastic, batch_size=8), tasks["nano_heldout"], limit=2)
    printed = capfd.readouterr()
    for bar in ("Running loglikelihood requests", "Tokenizing inputs"):
        assert bar not in printed.err + printed.out


def test_suite_scores_are_simple_evaluates_without_its_git_noise(elastic, capfd, monkeypatch, tmp_path):
    """`evaluate_submodel` runs lm-eval's `evaluate` set up as `simple_evaluate` sets it up: the
    same numbers, and, run outside a git repository, none of the "fatal: not a git repository"
    that `simple_evaluate` prints (it runs `git describe` to record a commit)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from matlab.harness.evaluate import evaluate_submodel

    monkeypatch.chdir(tmp_path)
    suite = load_suite(resolve_suite("nano"))
    scores = evaluate_submodel(elastic, suite, limit=6, seed=7)
    assert "not a git repository" not in capfd.readouterr().err
    local = local_task_configs(suite)
    for task in suite.tasks:
        spec = dict(local[task.name], num_fewshot=task.num_fewshot)
        results = simple_evaluate(model=MatformerLM(elastic), tasks=[spec],
                                  task_manager=TaskManager(include_defaults=False), limit=6, log_samples=False,
                                  bootstrap_iters=0, random_seed=7, numpy_random_seed=7, torch_random_seed=7,
                                  fewshot_random_seed=7)
        expected = {key.partition(",")[0]: value for key, value in results["results"][task.name].items()
                    if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
        assert {score.metric: score.value for score in scores if score.task == task.name} == expected
