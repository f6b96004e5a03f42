"""The budgeted search on the embedded nano model: budget, validity, determinism, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.cli import app
from matlab.core.loading import load_model
from matlab.errors import InputError
from matlab.io.resolve import resolve_checkpoint
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.runtimes import runtime_violations
from matlab.search.run import SearchSettings, run_search
from matlab.slice_config import load_slice_config
from matlab.slicing.checks import check_config_files
from matlab.slicing.slicer import slice_checkpoint

from helpers import kill_when_journal_has

runner = CliRunner()
NANO = resolve_checkpoint("nano")
BUDGET = 2_200_000  # below nano-E2B's 2.38M effective parameters
QUICK = ["--window", "64", "--calibration-tokens", "256", "--strategy", "seeded-nsga2"]
E2B_CONFIG = Path(__file__).resolve().parent.parent / "slice_configs" / "nano" / "nano-e2b.yaml"


def _settings(out: Path, **fields) -> SearchSettings:
    # These tests are about seeded NSGA-II's phases (EvoPress's own: tests/test_evopress.py).
    values = dict(max_params=BUDGET, max_evals=60, window=64, calibration_tokens=256, strategy="seeded-nsga2")
    return SearchSettings("nano", out, **{**values, **fields})


def _without_timing(path: Path) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if not key.endswith("seconds")}
            for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    return run_search(_settings(out))


def test_frontier_respects_the_budget_validates_slices_and_loads(searched, tmp_path):
    facts, inventory = facts_from_checkpoint(NANO), inventory_from_checkpoint(NANO)
    frontier = sorted((searched.directory / "frontier").glob("*.yaml"))
    assert len(frontier) == len(searched.summary["frontier"]) >= 2
    values = []
    for path in frontier:
        config = load_slice_config(path)
        plan = SlicePlan.build(config, facts, str(path))
        params = count_parameters(inventory, facts, plan, text_only=True).effective_params
        assert params <= BUDGET and params == config.reference.measured["effective_params"]
        values.append(config.reference.measured["kl"])
    # A Pareto set: cheaper configs have a larger objective.
    costs = [load_slice_config(p).reference.measured["effective_params"] for p in frontier]
    assert [v for _, v in sorted(zip(costs, values))] == sorted(values, reverse=True)
    assert all(not problems for problems in check_config_files(frontier, facts).values())
    best = searched.directory / searched.summary["best"]["file"]
    sliced = slice_checkpoint(NANO, load_slice_config(best), tmp_path / "best")
    assert load_model(tmp_path / "best").model.config.num_hidden_layers == len(sliced.plan.kept_layers)


def test_every_candidate_is_journaled_once_with_its_cost(searched):
    records = [json.loads(line) for line in (searched.directory / "candidates.jsonl").read_text().splitlines()]
    assert len(records) == searched.summary["evaluated"] == 60
    assert len({record["submodel_id"] for record in records}) == len(records)
    assert {record["phase"] for record in records} == {"start", "sensitivity", "path", "evolution"}
    assert records[0]["phase"] == "start" and records[0]["effective_params"] <= BUDGET  # inside the budget first
    full = records[1]
    assert full["layers_skipped"] == [] and full["value"] == pytest.approx(0.0, abs=1e-6)  # then the full model
    summary = json.loads((searched.directory / "search.json").read_text())
    assert summary["status"] == "complete" and summary["identity"]["seed"] == 0
    assert summary["best"]["value"] == min(entry["value"] for entry in summary["frontier"])


def test_same_seed_same_search_and_resume_redoes_nothing(searched, tmp_path):
    again = run_search(_settings(tmp_path / "again"))
    assert _without_timing(again.directory / "candidates.jsonl") == \
        _without_timing(searched.directory / "candidates.jsonl")
    resumed = run_search(_settings(tmp_path / "again"))
    assert resumed.summary["evaluated_now"] == 0 and resumed.summary["frontier"] == again.summary["frontier"]
    extended = run_search(_settings(tmp_path / "again", max_evals=70))  # a resumed search may go further
    assert extended.summary["evaluated_now"] == 10
    widths = run_search(_settings(tmp_path / "widths", widths=(512, 256), max_evals=45))
    assert run_search(_settings(tmp_path / "widths", widths=(512, 256), max_evals=45)).summary["evaluated_now"] == 0
    assert widths.summary["evaluated_now"] == 45


def test_killed_search_resumes_without_loss_or_duplicates(searched, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "matlab", "search", "nano", "--out", str(out), "--max-params", str(BUDGET),
               "--max-evals", "60", *QUICK]
    journal = out / "candidates.jsonl"
    partial = kill_when_journal_has(command, journal, 25, 120)
    assert 25 <= partial < 60
    finished = subprocess.run(command, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _without_timing(journal) == _without_timing(searched.directory / "candidates.jsonl")
    assert json.loads((out / "search.json").read_text())["evaluated_now"] == 60 - partial


def test_runtime_restricts_the_space(tmp_path):
    result = run_search(_settings(tmp_path / "ollama", runtime="ollama", max_params=3_000_000, max_evals=20))
    facts = facts_from_checkpoint(NANO)
    for entry in result.summary["frontier"]:
        plan = SlicePlan.build(load_slice_config(result.directory / entry["file"]), facts)
        assert runtime_violations(plan, "ollama") == [] and len(set(plan.ffn_widths)) == 1
        assert "ollama" in entry["expected_in"] and "ollama" not in entry["runs_in"]
    records = [json.loads(line) for line in (result.directory / "candidates.jsonl").read_text().splitlines()]
    assert all(len(set(record["ffn_widths"])) == 1 for record in records)  # not even evaluated otherwise
    assert any("no conformance run has confirmed that ollama" in warning for warning in result.warnings)


def test_a_runtime_no_slice_of_the_base_runs_in_is_refused_up_front(tmp_path):
    with pytest.raises(InputError, match="--runtime llama.cpp: no slice of .*nano can run there: llama.cpp: "
                                         "fixed-shape: its Gemma 3n loader fixes the base's shape"):
        run_search(_settings(tmp_path / "llama", runtime="llama.cpp", max_params=3_000_000, max_evals=20))
    assert not (tmp_path / "llama").exists()


def test_perplexity_objective_and_byte_budget(tmp_path):
    result = run_search(_settings(tmp_path / "ppl", max_params=None, max_bytes=9_000_000, objective="perplexity",
                                  max_evals=45))
    assert result.summary["budget"]["cost"] == "weight_bytes"
    assert all(entry["weight_bytes"] <= 9_000_000 and entry["value"] > 1 for entry in result.summary["frontier"])


def test_confirm_writes_a_sweep_keyed_like_the_search(tmp_path):
    out = tmp_path / "confirm"
    result = runner.invoke(app, ["search", "nano", "--out", str(out), "--max-params", "2.2M", "--max-evals", "45",
                                 *QUICK, "--confirm-suite", "nano", "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = [json.loads(line) for line in (out / "confirm" / "results.jsonl").read_text().splitlines()]
    assert {row["submodel_id"] for row in rows} == {entry["submodel_id"] for entry in summary["frontier"]}
    report = runner.invoke(app, ["report", str(out / "confirm"), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report" / "index.html").read_text()
    assert f"The search: {summary['evaluated']} candidates" in html  # found as the confirm run's search
    # A hand-written sweep with the search's found configs drawn beside it, marked, with runtimes.
    sweep = runner.invoke(app, ["sweep", "nano", "--configs", str(E2B_CONFIG), "--suite", "nano",
                                "--limit", "2", "--out", str(tmp_path / "hand")])
    assert sweep.exit_code == 0, sweep.output
    overlay = runner.invoke(app, ["report", str(tmp_path / "hand"), "--out", str(tmp_path / "overlay"), "--search",
                                  str(out)])
    assert overlay.exit_code == 0, overlay.output
    html = (tmp_path / "overlay" / "index.html").read_text()
    found = [entry["name"] for entry in summary["frontier"]]
    assert html.count("&#9733; found-") == len(found) and "Stars: configs found by `matformer search`" in html
    assert "transformers, vllm, mlx-lm (expected, not measured: ollama)" in html  # nano-E2B's runtimes
    missing = runner.invoke(app, ["report", str(tmp_path / "hand"), "--out", str(tmp_path / "x"), "--search",
                                  str(tmp_path)])
    assert missing.exit_code == 1 and "no search.json" in missing.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--max-params", "50K"], "the budget is below the smallest valid submodel"),
    (["--max-params", "lots"], "--max-params: cannot read count 'lots'"),
    (["--max-bytes", "3 parsecs"], "--max-bytes: cannot read size"),
    ([], "give a budget: --max-params"),
    (["--max-params", "2M", "--runtime", "tgi"], "--runtime tgi: unknown runtime"),
    (["--max-params", "2M", "--objective", "bleu"], "--objective bleu: choose one of kl, perplexity"),
    (["--max-params", "2M", "--widths", "512,x"], "--widths: cannot read"),
    (["--max-params", "2M", "--widths", "1024"], "--widths: each width must be between 1 and the base width 512"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, arguments, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "nano", "--out", str(out), *arguments, *QUICK])
    assert result.exit_code != 0 and message in result.stderr, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_real_checkpoint_needs_calibration_and_dir_must_match(tiny_text, searched, tmp_path):
    result = runner.invoke(app, ["search", str(tiny_text), "--out", str(tmp_path / "o"), "--max-params", "300K"])
    assert result.exit_code == 2 and "--calibration:" in result.stderr and not (tmp_path / "o").exists()
    other = runner.invoke(app, ["search", "nano", "--out", str(searched.directory), "--max-params", "2.1M",
                                "--max-evals", "60", *QUICK])
    assert other.exit_code == 2 and "holds a search with different max_params" in other.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    busy = runner.invoke(app, ["search", "nano", "--out", str(tmp_path / "busy"), "--max-params", "2.2M", *QUICK])
    assert busy.exit_code == 2 and "holds no search.json" in busy.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_calibration_file_for_a_real_checkpoint(tiny_text, tmp_path):
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": f"sample text number {i} about slicing"}) + "\n"
                                   for i in range(40)))
    result = run_search(SearchSettings(str(tiny_text), tmp_path / "tiny", max_params=300_000, calibration=calibration,
                                       max_evals=40, window=32, calibration_tokens=256))
    assert result.summary["frontier"] and result.summary["identity"]["calibration"] == str(calibration)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(Exception, match="line 1 has no string field 'text'"):
        run_search(SearchSettings(str(tiny_text), tmp_path / "bad", max_params=300_000, calibration=bad))
    assert not (tmp_path / "bad").exists()
    assert yaml.safe_load((result.directory / result.summary["best"]["file"]).read_text())["reference"]["source"] \
        == "matformer search"
