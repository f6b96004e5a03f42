"""The lm-eval adapter, resumable sweeps and reports, on the tiny checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matlab.cli import app
from matlab.harness.results import read_results
from matlab.harness.suite import load_suite
from matlab.harness.sweep import SweepError, SweepSettings, run_sweep
from matlab.report.report import build_report

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(f"name: tiny\ntask_dirs: [{REPO / 'evals' / 'nano'}]\n"
                    "tasks:\n  - name: nano_facts\n  - name: nano_heldout\n    metric: word_perplexity\n"
                    "    higher_is_better: false\n")
    return path


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("configs")
    (directory / "full.yaml").write_text("name: full\nffn_widths: 256\n")
    (directory / "half.yaml").write_text("name: half\nlayers_skipped: [10, 11, 12, 13, 14]\nffn_widths: 128\n")
    (directory / "evil.yaml").write_text("name: <script>alert(1)</script>\nlayers_skipped: [0]\nffn_widths: 64\n")
    return directory


def test_sweep_resumes_and_materialized_agrees(tiny_text, suite_file, config_dir, tmp_path):
    paths = sorted(config_dir.glob("*.yaml"))
    settings = SweepSettings(load_suite(suite_file), limit=3, latency_rounds=1)
    assert len(run_sweep(tiny_text, paths, tmp_path / "run", settings)) == 3
    frame = read_results(tmp_path / "run")
    assert len(frame) == 3 * 4  # facts acc + three perplexity metrics per config
    assert set(frame.columns) >= {"config", "task", "metric", "value", "stderr", "effective_params", "ple_params",
                                  "weight_bytes", "prefill_tokens_per_s", "decode_tokens_per_s",
                                  "peak_memory_bytes", "tool_version", "submodel_id", "checkpoint", "seed"}
    assert (frame["bos_policy"] == "lm-eval").all() and (frame["latency_rounds"] == 1).all()
    assert (frame["decode_tokens_per_s_min"] <= frame["decode_tokens_per_s"]).all()
    assert frame["peak_memory_bytes"].isna().all()  # measured per config on CUDA only
    assert run_sweep(tiny_text, paths, tmp_path / "run", settings) == []  # resumed: nothing left
    materialized = SweepSettings(settings.suite, limit=3, materialize=True, latency_rounds=1)
    run_sweep(tiny_text, paths, tmp_path / "mat", materialized)
    other = read_results(tmp_path / "mat")
    key = ["submodel_id", "task", "metric"]
    merged = frame.merge(other, on=key, suffixes=("_elastic", "_materialized"))
    assert len(merged) == len(frame)
    assert (merged["value_elastic"] - merged["value_materialized"]).abs().max() < 1e-6 * merged["value_elastic"].abs().max()
    assert (merged["weight_bytes_elastic"] == merged["weight_bytes_materialized"]).all()
    assert not (tmp_path / "mat" / "materialized").exists() or not any((tmp_path / "mat" / "materialized").iterdir())
    with pytest.raises(SweepError, match="different limit"):
        run_sweep(tiny_text, paths, tmp_path / "run", SweepSettings(settings.suite, limit=2))


def _scores(path: Path) -> list[tuple]:
    return [(row["task"], row["metric"], row["value"], row["seconds"]) for row in json.loads(path.read_text())]


def test_killed_sweep_resumes_without_loss_or_duplicates(tiny_text, suite_file, config_dir, tmp_path):
    command = [sys.executable, "-m", "matlab", "sweep", str(tiny_text), "--configs", str(config_dir),
               "--suite", str(suite_file), "--out", str(tmp_path / "run"), "--limit", "3"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    configs = tmp_path / "run" / "configs"
    deadline = time.time() + 300
    while time.time() < deadline and not (configs.is_dir() and any(configs.glob("*.json"))):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = {p.name: _scores(p) for p in configs.glob("*.json")}
    assert 1 <= len(first) < 3, "the kill should land mid-sweep"
    result = runner.invoke(app, command[3:])
    assert result.exit_code == 0, result.output
    assert f"{3 - len(first)} config(s) evaluated, {len(first)} already done" in result.stdout
    # The finished configs were not evaluated again: their scores and timings are as recorded
    # before the kill (the latency phase, run after all scores, adds its fields to every row).
    assert {p.name: _scores(p) for p in configs.glob("*.json") if p.name in first} == first
    frame = read_results(tmp_path / "run")
    assert len(frame) == 3 * 4 and not frame.duplicated(["submodel_id", "task", "metric"]).any()


def test_report_is_self_contained_and_escaped(tiny_text, suite_file, config_dir, tmp_path):
    run_sweep(tiny_text, sorted(config_dir.glob("*.yaml")), tmp_path / "run",
              SweepSettings(load_suite(suite_file), limit=2, latency_rounds=1))
    path = build_report(tmp_path / "run", tmp_path / "report")
    html = path.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org', "")
    assert "https://" not in html and html.count("data:image/svg+xml;base64,") >= 4
    assert "nano_facts" in html and "Pareto" in html
    again = runner.invoke(app, ["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    assert again.exit_code == 2 and "pass --force" in again.stderr
    empty = runner.invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r2")])
    assert empty.exit_code == 1 and "no results.jsonl rows" in empty.stderr


def test_suite_errors_are_named(tmp_path, tiny_text):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: []\n")
    result = runner.invoke(app, ["eval", str(tiny_text), "--suite", str(bad)])
    assert result.exit_code == 1 and "tasks: Tuple should have at least 1 item" in result.stderr
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\ntask_dirs: [nowhere]\ntasks: [{name: t}]\n")
    result = runner.invoke(app, ["eval", str(tiny_text), "--suite", str(unknown)])
    assert result.exit_code == 1 and "task_dirs entry 'nowhere' is not a directory" in result.stderr


def test_hub_suite_offline_fails_before_any_work_naming_the_datasets(tmp_path):
    """The model-card suite needs the Hub; offline, with nothing cached, eval and sweep stop before
    loading anything with one line naming every dataset (and the tasks that read it)."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "c"),
           "HF_HUB_CACHE": str(tmp_path / "h")}
    for command in (["eval", "nano"], ["sweep", "nano", "--configs", "nano", "--out", str(tmp_path / "run")]):
        completed = subprocess.run([sys.executable, "-m", "matlab", *command, "--suite", "gemma3n-model-card",
                                    "--limit", "1"], capture_output=True, text=True, env=env, timeout=600)
        assert completed.returncode == 1 and "Traceback" not in completed.stderr
        line = completed.stderr.strip()
        assert line.startswith("error: suite gemma3n-model-card needs Hugging Face datasets") and "\n" not in line
        for dataset in ("Rowan/hellaswag (hellaswag)", "EleutherAI/drop (drop)", "SaylorTwift/bbh (bbh_cot_fewshot)",
                        "google-research-datasets/nq_open (nq_open)", "allenai/ai2_arc (arc_challenge, arc_easy)"):
            assert dataset in line
    assert not (tmp_path / "run").exists()



def test_a_limited_demo_scales_its_search_down_with_the_limit():
    """Its least search still gets below the demo's budget: test_packaging runs the demo with --limit 1."""
    from matlab.demo import (
        LEAST_CALIBRATION_TOKENS,
        LEAST_SEARCH_EVALS,
        SEARCH_CALIBRATION_TOKENS,
        SEARCH_EVALS,
        search_scale,
    )

    assert search_scale(None) == search_scale(10_000) == (SEARCH_EVALS, SEARCH_CALIBRATION_TOKENS)
    assert search_scale(1) == search_scale(10) == (LEAST_SEARCH_EVALS, LEAST_CALIBRATION_TOKENS)
    evals, tokens = zip(*(search_scale(limit) for limit in (1, 40, 64, 100, 128, None)))
    assert list(evals) == sorted(evals) and list(tokens) == sorted(tokens) and len(set(tokens)) > 2
