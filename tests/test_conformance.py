"""Conformance verdicts on fake runtimes: one that runs, one that computes another model, one
that refuses, one that aborts its process, one that hangs; and the CLI around them."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matlab.cli import app
from matlab.errors import InputError
from matlab.runtimes.conform import ANOTHER_MODEL, CRASHES, REFUSES, RUNS, Runner, conform, runner_for
from matlab.runtimes.envs import INSTALLED, RUNNERS

from helpers import tiny_text_model

cli = CliRunner()
TRANSFORMERS_RUNNER = RUNNERS / "transformers_runner.py"


def _fake(tmp_path: Path, name: str, body: str) -> Runner:
    """A runner whose script is `body` (Python; the protocol's arguments in sys.argv)."""
    script = tmp_path / f"{name}.py"
    script.write_text("import json, os, sys, time\n"
                      "args = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n" + body)
    return Runner("fake", Path(sys.executable), script)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """Same architecture and vocabulary as tiny_text, other weights: "another model"."""
    directory = tmp_path_factory.mktemp("other-model")
    tiny_text_model(init_seed=5, perturb_seed=6).save_pretrained(directory)
    return directory


def test_the_same_model_runs(tiny_text):
    result = conform(tiny_text, "fake", runner=Runner("fake", Path(sys.executable), TRANSFORMERS_RUNNER), count=24)
    assert result.verdict == RUNS and result.runs
    assert result.max_abs_diff <= 1e-9 and result.top1_agree == result.positions == 24
    assert result.version == result.reference_version and result.weight_type == "f32"


def test_another_model_is_named_with_its_numbers(tiny_text, other_model, tmp_path):
    fake = _fake(tmp_path, "other", f"args['--model'] = {str(other_model)!r}\n"
                 f"os.execv(sys.executable, [sys.executable, {str(TRANSFORMERS_RUNNER)!r}, "
                 "*[item for pair in args.items() for item in pair]])\n")
    result = conform(tiny_text, "fake", runner=fake, count=24)
    assert result.verdict == ANOTHER_MODEL and not result.runs
    assert result.max_abs_diff > result.tolerance == 0.05
    assert "loads, but its log-probs differ from transformers' by up to" in result.message
    assert 0 <= result.top1_agree < 24  # random weights: some argmaxes agree by chance, not all


def test_a_refusal_carries_the_runtimes_own_words(tiny_text, tmp_path):
    fake = _fake(tmp_path, "refuse", "json.dump({'runtime': 'fake', 'version': '9.1', 'stage': 'load', "
                 "'error': 'ValueError: Model type gemma3n_text not supported.'}, open(args['--out'], 'w'))\n"
                 "sys.exit(3)\n")
    result = conform(tiny_text, "fake", runner=fake)
    assert (result.verdict, result.version) == (REFUSES, "9.1")
    assert result.message == "ValueError: Model type gemma3n_text not supported."
    assert result.max_abs_diff is None


def test_a_runtime_that_aborts_its_process_is_reported_not_fatal(tiny_text, tmp_path):
    fake = _fake(tmp_path, "abort", "print('llama_model_load: loading', file=sys.stderr)\n"
                 "print('gemma3n-iswa.cpp:41: GGML_ASSERT(map_layer_ids.find(il_reuse) != end) failed', "
                 "file=sys.stderr, flush=True)\nos.abort()\n")
    result = conform(tiny_text, "fake", runner=fake)
    assert result.verdict == CRASHES
    assert result.message == ("killed by signal 6: gemma3n-iswa.cpp:41: GGML_ASSERT(map_layer_ids.find(il_reuse) "
                              "!= end) failed")


def test_a_runtime_that_hangs_is_stopped(tiny_text, tmp_path):
    result = conform(tiny_text, "fake", runner=_fake(tmp_path, "hang", "time.sleep(60)\n"), timeout=3)
    assert result.verdict == CRASHES and "no answer within 3 s" in result.message


def test_a_runtime_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MATFORMER_RUNTIMES", str(tmp_path))
    with pytest.raises(InputError, match=r"runtime vllm is not installed under .*: run `matformer runtimes install "
                                         r"vllm`"):
        runner_for("vllm")
    with pytest.raises(InputError, match="--runtime ollama: no conformance runner .Ollama is not installable here"):
        runner_for("ollama")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="--type q8_0: only llama.cpp takes a weight type"):
        conform(tmp_path, "transformers", weight_type="q8_0")


def _installed_fake(root: Path, runtime: str, body: str) -> None:
    """An 'installed' runtime whose interpreter runs `body` instead of the real runner."""
    venv = root / runtime / "venv" / "bin"
    venv.mkdir(parents=True)
    (root / runtime / INSTALLED).write_text(json.dumps({"runtime": runtime, "versions": {}}))
    fake = root / f"{runtime}-fake.py"
    fake.write_text("import json, os, sys\nargs = dict(zip(sys.argv[2::2], sys.argv[3::2]))\n" + body)
    python = venv / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)


def test_conform_command_exit_codes_and_json(tiny_text, tmp_path, monkeypatch):
    monkeypatch.setenv("MATFORMER_RUNTIMES", str(tmp_path))
    _installed_fake(tmp_path, "mlx-lm", f"os.execv(sys.executable, [sys.executable, {str(TRANSFORMERS_RUNNER)!r}, "
                                         "*sys.argv[2:]])\n")
    _installed_fake(tmp_path, "mlx-vlm", "os.abort()\n")
    good = cli.invoke(app, ["conform", str(tiny_text), "--runtime", "mlx-lm", "--tokens", "16"])
    assert good.exit_code == 0, good.output
    assert "mlx-lm" in good.stdout and ": runs: max |d log p|" in good.stdout and "top-1 agrees 16/16" in good.stdout
    bad = cli.invoke(app, ["conform", str(tiny_text), "--runtime", "mlx-vlm", "--json"])
    assert bad.exit_code == 1
    record = json.loads(bad.stdout)
    assert record["verdict"] == CRASHES and record["message"].startswith("killed by signal 6")
    missing = cli.invoke(app, ["conform", str(tiny_text), "--runtime", "vllm"])
    assert missing.exit_code == 2 and "matformer runtimes install vllm" in missing.stderr
    assert os.listdir(tiny_text)  # the slice itself is untouched


def test_matrix_table_marks_wrong_rules_and_names_no_local_paths(tmp_path):
    from matlab.bench.runtime_matrix import Case, MatrixRow, SliceKind, render_matrix
    from matlab.runtimes.conform import Conformance

    kind = SliceKind("skip-before-shared", "skip layer 17", (17,), 128)
    crashed = Conformance("llama.cpp", "0.3.36", str(tmp_path / "slice"), "f32", CRASHES,
                          f"killed by signal 6: {tmp_path}/src/llama-kv-cache.cpp:268: GGML_ASSERT(x) failed")
    ran = Conformance("llama.cpp", "0.3.36", str(tmp_path / "slice"), "q8_0", RUNS, "within 0.15",
                      max_abs_diff=0.031, top1_agree=63, positions=64, tolerance=0.15)
    rows = [MatrixRow("e4b-shaped", kind, Case("llama.cpp", "gguf", "f32"), crashed, CRASHES, "kv-prefix"),
            MatrixRow("e4b-shaped", kind, Case("llama.cpp", "gguf", "q8_0"), ran, CRASHES, "kv-prefix")]
    table = render_matrix(rows, "matformer bench runtimes")
    lines = [line for line in table.splitlines() if line.startswith("| e4b-shaped")]
    assert "llama-kv-cache.cpp:268: GGML_ASSERT(x) failed" in lines[0] and "(rule wrong)" not in lines[0]
    assert "runs **(rule wrong)** | crashes | 0.031 | 63/64" in lines[1]
    assert str(tmp_path) not in table
