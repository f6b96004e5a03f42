"""Damaged run directories, hostile calibration files and concurrent runs: each ends in one
line naming the file and the fix, and nothing in the run directory is written or lost."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from matlab.cli import app
from matlab.core.calibration import PIECE_CHARS, make_calibration, read_calibration, texts_digest
from matlab.core.loading import load_tokenizer
from matlab.errors import InputError, MatformerError, MatformerWarning
from matlab.harness.results import read_results
from matlab.harness.suite import load_suite
from matlab.harness.sweep import SweepSettings, run_sweep
from matlab.io.lock import LOCK_FILE, run_directory_lock
from matlab.io.resolve import resolve_checkpoint
from matlab.report.report import ReportError, build_report
from matlab.search.run import SearchSettings, run_search

REPO = Path(__file__).resolve().parent.parent
NANO = resolve_checkpoint("nano")
runner = CliRunner()
SEARCH = dict(max_params=2_200_000, max_evals=12, window=64, calibration_tokens=256, strategy="seeded-nsga2")
SEARCH_ARGS = ["--max-params", "2.2M", "--max-evals", "12", "--window", "64", "--calibration-tokens", "256",
               "--strategy", "seeded-nsga2"]


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (the lock included) by relative path, with its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def _one_line_failure(result, message: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- sweeps --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(f"name: tiny\ntask_dirs: [{REPO / 'evals' / 'nano'}]\ntasks:\n  - name: nano_facts\n")
    return path


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("configs")
    (directory / "full.yaml").write_text("name: full\nffn_widths: 256\n")
    (directory / "half.yaml").write_text("name: half\nlayers_skipped: [10, 11, 12, 13, 14]\nffn_widths: 128\n")
    return directory


def _sweep_settings(suite_file: Path) -> SweepSettings:
    return SweepSettings(load_suite(suite_file), limit=1, latency_rounds=1)


@pytest.fixture(scope="module")
def swept(tiny_text, suite_file, config_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("swept") / "run"
    run_sweep(tiny_text, sorted(config_dir.glob("*.yaml")), run_dir, _sweep_settings(suite_file))
    return run_dir


@pytest.fixture()
def run_copy(swept, tmp_path) -> Path:
    shutil.copytree(swept, tmp_path / "run")
    return tmp_path / "run"


def _sweep_command(tiny_text, config_dir, suite_file, run_dir) -> list[str]:
    return ["sweep", str(tiny_text), "--configs", str(config_dir), "--suite", str(suite_file), "--out", str(run_dir),
            "--limit", "1"]


def _a_config(run_dir: Path) -> Path:
    return sorted((run_dir / "configs").glob("*.json"))[0]


def test_finished_sweep_leaves_no_lock(swept):
    assert sorted(path.name for path in swept.iterdir()) == ["configs", "results.jsonl", "run.json"]


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "run.json").write_text('{"identity": {"results_format": 3,'),
     "run.json: not valid JSON (line 1, column 35); it records which sweep"),
    (lambda run: (run / "run.json").write_text("[1, 2]"), "run.json: holds a list, not an object"),
    (lambda run: (run / "run.json").write_text('{"tool_version": "0.1"}'), "run.json: has no sweep identity"),
    (lambda run: (run / "run.json").write_text(""), "run.json: empty"),
    (lambda run: (run / "run.json").unlink(), "run.json: missing, though"),
    (lambda run: _a_config(run).write_text(_a_config(run).read_text()[:40]),
     ".json: not valid JSON (line 4, column 16); delete it to re-run that config, or choose another --out"),
    (lambda run: _a_config(run).write_bytes(b"\x89PNG\r\n\x1a\n\xff\x00"), ".json: not UTF-8 text"),
    (lambda run: _a_config(run).write_text('{"config": "full"}'),
     ".json: an object, not the result rows of a config; delete it to re-run that config"),
    (lambda run: _a_config(run).write_text('[{"config": "full", "task": "t"}]'),
     ".json: row 1 is missing 'submodel_id', 'metric', 'value' (not a result row)"),
    (lambda run: _a_config(run).write_text("[" * 100_000 + "]" * 100_000), ".json: not JSON that can be read"),
])
def test_damaged_sweep_is_refused_on_resume(tiny_text, suite_file, config_dir, run_copy, damage, message):
    damage(run_copy)
    before = _snapshot(run_copy)
    with pytest.raises(InputError) as caught:
        run_sweep(tiny_text, sorted(config_dir.glob("*.yaml")), run_copy, _sweep_settings(suite_file))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(run_copy) in str(caught.value)
    assert _snapshot(run_copy) == before


def test_damaged_config_through_the_cli(tiny_text, suite_file, config_dir, run_copy):
    config = _a_config(run_copy)
    config.write_text(config.read_text()[:40])
    before = _snapshot(run_copy)
    result = runner.invoke(app, _sweep_command(tiny_text, config_dir, suite_file, run_copy))
    _one_line_failure(result, f"{config}: not valid JSON (line 4, column 16); delete it to re-run that config")
    assert _snapshot(run_copy) == before


def test_sweep_into_a_file_is_one_line(tiny_text, suite_file, config_dir, tmp_path):
    (tmp_path / "run").write_text("mine")
    result = runner.invoke(app, _sweep_command(tiny_text, config_dir, suite_file, tmp_path / "run"))
    _one_line_failure(result, "run exists and is not a directory; choose another --out")
    assert (tmp_path / "run").read_text() == "mine"


def test_deleted_results_are_rebuilt_on_resume(tiny_text, suite_file, config_dir, run_copy, swept):
    (run_copy / "results.jsonl").unlink()
    assert run_sweep(tiny_text, sorted(config_dir.glob("*.yaml")), run_copy, _sweep_settings(suite_file)) == []
    assert (run_copy / "results.jsonl").read_bytes() == (swept / "results.jsonl").read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:-25], "results.jsonl: line 2 is not valid JSON (column"),
    (lambda text: text.replace("\n", "\nnot json\n", 1), "results.jsonl: line 2 is not valid JSON (column 1)"),
    (lambda text: text + "[1]\n", "results.jsonl: line 3 is a list, not an object (not a result row)"),
])
def test_damaged_results_are_refused_by_the_report(run_copy, tmp_path, damage, message):
    results = run_copy / "results.jsonl"
    results.write_text(damage(results.read_text()))
    before = _snapshot(run_copy)
    with pytest.raises(InputError, match="delete it and run the sweep again with --out"):
        read_results(run_copy)
    result = runner.invoke(app, ["report", str(run_copy), "--out", str(tmp_path / "report")])
    _one_line_failure(result, message)
    assert not (tmp_path / "report").exists() and _snapshot(run_copy) == before


def test_truncated_results_line_is_named_as_cut_short(run_copy, tmp_path):
    results = run_copy / "results.jsonl"
    results.write_text(results.read_text()[:-25])
    with pytest.raises(InputError, match=r"line 2 is not valid JSON \(column \d+, cut short\)"):
        build_report(run_copy, tmp_path / "report")


@pytest.mark.parametrize("text, message", [
    ("{", "run.json: not valid JSON (line 1, column 2); restore it, or move it aside"),
    ('"run"', "run.json: holds a string, not an object"),
    ('{"identity": {"suite": {"tasks": [3]}}}', "run.json: not the record of a sweep"),
])
def test_damaged_run_record_is_refused_by_the_report(run_copy, tmp_path, text, message):
    (run_copy / "run.json").write_text(text)
    before = _snapshot(run_copy)
    with pytest.raises(InputError, match="run.json"):
        build_report(run_copy, tmp_path / "report")
    result = runner.invoke(app, ["report", str(run_copy), "--out", str(tmp_path / "report")])
    _one_line_failure(result, message)
    assert not (tmp_path / "report").exists() and _snapshot(run_copy) == before


def test_rows_without_the_fields_the_report_draws(run_copy, tmp_path):
    results = run_copy / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    results.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "ffn_widths"}) + "\n" for row in rows))
    with pytest.raises(ReportError, match="results.jsonl: rows without ffn_widths, which the report draws"):
        build_report(run_copy, tmp_path / "report")


def _set_field(path: Path, number: int, name: str, value) -> None:
    """Give row `number` of a results.jsonl (or config file's rows) `value` for field `name`."""
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines(keepends=True)
        lines[number - 1] = json.dumps({**json.loads(lines[number - 1]), name: value}) + "\n"
        path.write_text("".join(lines))
    else:
        rows = json.loads(path.read_text())
        rows[number - 1][name] = value
        path.write_text(json.dumps(rows))


WRONG_FIELDS = [
    ("value", "abc", "has a string for 'value', not a number"),
    ("value", None, "has null for 'value', not a number"),
    ("value", True, "has true for 'value', not a number"),
    ("task", 3, "has a number for 'task', not a string"),
    ("config", ["full"], "has a list for 'config', not a string"),
    ("effective_params", 1.5, "has 1.5 for 'effective_params', not an integer"),
    ("weight_bytes", False, "has false for 'weight_bytes', not an integer"),
    ("effective_params", 10 ** 30, "has a number too large for 'effective_params' (past 64 bits)"),
]


@pytest.mark.parametrize("name, value, message", WRONG_FIELDS)
def test_results_fields_of_the_wrong_kind_are_refused_by_the_report(run_copy, tmp_path, name, value, message):
    """A field the report computes with holding anything else is one line naming it, not a
    pandas or Pareto traceback ("could not convert string to float")."""
    results = run_copy / "results.jsonl"
    _set_field(results, 2, name, value)
    before = _snapshot(run_copy)
    with pytest.raises(InputError, match="delete it and run the sweep again with --out"):
        read_results(run_copy)
    result = runner.invoke(app, ["report", str(run_copy), "--out", str(tmp_path / "report")])
    _one_line_failure(result, f"{results}: line 2 {message} (not a result row); it is rebuilt from")
    assert not (tmp_path / "report").exists() and _snapshot(run_copy) == before


@pytest.mark.parametrize("name, value, message", WRONG_FIELDS[:4])
def test_config_rows_of_the_wrong_kind_are_refused_on_resume(tiny_text, suite_file, config_dir, run_copy, name, value,
                                                             message):
    config = _a_config(run_copy)
    _set_field(config, 1, name, value)
    before = _snapshot(run_copy)
    result = runner.invoke(app, _sweep_command(tiny_text, config_dir, suite_file, run_copy))
    _one_line_failure(result, f"{config}: row 1 {message} (not a result row); delete it to re-run that config")
    assert _snapshot(run_copy) == before


def test_what_the_sweep_writes_is_read_back(run_copy, tmp_path):
    """A metric lm-eval gave as NaN is written as NaN (and a stderr it did not give as null):
    the report reads both, and leaves the NaN point off the frontier."""
    results = run_copy / "results.jsonl"
    _set_field(results, 1, "value", float("nan"))
    _set_field(results, 1, "stderr", None)
    assert "NaN" in results.read_text().splitlines()[0]
    assert read_results(run_copy)["value"].isna().sum() == 1
    build_report(run_copy, tmp_path / "report")


# -- searches ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("searched") / "search"
    run_search(SearchSettings("nano", out, **SEARCH))
    return out


@pytest.fixture()
def search_copy(searched, tmp_path) -> Path:
    shutil.copytree(searched, tmp_path / "search")
    return tmp_path / "search"


def _without_timing(path: Path) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if not key.endswith("seconds")}
            for line in path.read_text().splitlines()]


def _set_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = text
    path.write_text("".join(lines))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "search.json").write_text('{"tool": "matformer-lab", "identity": {'),
     "search.json: not valid JSON (line 1, column 40); it records which search"),
    (lambda d: (d / "search.json").write_text("[]"), "search.json: holds a list, not an object"),
    (lambda d: (d / "search.json").write_text('{"status": "complete"}'), "search.json: has no search identity"),
    (lambda d: _set_line(d / "candidates.jsonl", 3, '{"submodel_id": "x", \n'),
     "candidates.jsonl: line 3 is not valid JSON (column 22); delete that line to evaluate its candidate again"),
    (lambda d: _set_line(d / "candidates.jsonl", 2, '{"submodel_id": "x"}\n'),
     "candidates.jsonl: line 2 is missing or wrong 'layers_skipped', 'ffn_widths', 'effective_params', "
     "'weight_bytes', 'value' (not a candidate record)"),
    (lambda d: _set_line(d / "candidates.jsonl", 4, '"text"\n'), "candidates.jsonl: line 4 is a string, not an object"),
])
def test_damaged_search_is_refused_on_resume(search_copy, damage, message):
    damage(search_copy)
    before = _snapshot(search_copy)
    with pytest.raises(InputError) as caught:
        run_search(SearchSettings("nano", search_copy, **SEARCH))
    assert message in str(caught.value) and str(search_copy) in str(caught.value)
    assert _snapshot(search_copy) == before


def test_damaged_search_through_the_cli(search_copy):
    (search_copy / "search.json").write_text("{")
    before = _snapshot(search_copy)
    result = runner.invoke(app, ["search", "nano", "--out", str(search_copy), *SEARCH_ARGS])
    _one_line_failure(result, f"{search_copy / 'search.json'}: not valid JSON (line 1, column 2)")
    assert _snapshot(search_copy) == before


def test_torn_last_journal_line_is_dropped_and_redone(search_copy, searched):
    """A last line cut short holds no finished record: the search drops it, says so, and
    evaluates that candidate again, ending with the journal it would have had."""
    journal = search_copy / "candidates.jsonl"
    text = journal.read_text()
    journal.write_text(text[:text.rstrip("\n").rfind("\n") + 30])  # the last record cut after 29 characters
    result = run_search(SearchSettings("nano", search_copy, **SEARCH))
    assert any("candidates.jsonl: dropped its last line (12), cut short; that candidate is evaluated again" in warning
               for warning in result.warnings)
    assert result.summary["evaluated_now"] == 1
    assert _without_timing(journal) == _without_timing(searched / "candidates.jsonl")


def test_report_refuses_a_torn_or_unfinished_search(swept, search_copy, tmp_path):
    journal = search_copy / "candidates.jsonl"
    text = journal.read_text()
    journal.write_text(text[:-20])
    with pytest.raises(InputError, match=r"candidates.jsonl: line 12 is not valid JSON \(column \d+, cut short\)"):
        build_report(swept, tmp_path / "report", search=search_copy)
    journal.write_text(text)
    summary = json.loads((search_copy / "search.json").read_text())
    (search_copy / "search.json").write_text(json.dumps({**summary, "status": "running"}))
    before = _snapshot(search_copy)
    result = runner.invoke(app, ["report", str(swept), "--out", str(tmp_path / "report"), "--search",
                                 str(search_copy)])
    _one_line_failure(result, "search.json is not the record of a finished search (status 'running'); run the "
                              "search again with the same arguments to finish it")
    assert not (tmp_path / "report").exists() and _snapshot(search_copy) == before


# -- calibration ---------------------------------------------------------------------------------

def _calibration_before(tokenizer, texts: list[str], window: int, max_tokens: int, batch_size: int = 8):
    """The calibration windows as they were made before the text was streamed (the oracle)."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(stream) >= max_tokens:
            break
    body = window - 1
    full_windows = min(max(1, max_tokens // window), len(stream) // body)
    windows = [[tokenizer.bos_token_id, *stream[i * body:(i + 1) * body]] for i in range(full_windows)]
    windows = windows or [[tokenizer.bos_token_id, *stream[:body]]]
    return tuple(torch.tensor(windows[start:start + batch_size]) for start in range(0, len(windows), batch_size))


def _texts_read(tokenizer, texts: list[str], window: int, max_tokens: int) -> int:
    """How many texts the windows need: read until the windows' tokens are there, or until
    `max_tokens` are at the end of a text (as before)."""
    needed, count = max(1, max_tokens // window) * (window - 1), 0
    for number, text in enumerate(texts, 1):
        count += len(tokenizer(text, add_special_tokens=False).input_ids)
        if count >= needed or count + 1 >= max_tokens:
            return number
        count += 1
    return len(texts)


def _same_batches(first, second) -> bool:
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("window, tokens", [(64, 256), (32, 2048), (256, 16), (16, 17)])
def test_small_calibration_files_are_read_as_before(tiny_text, tmp_path, window, tokens):
    tokenizer = load_tokenizer(tiny_text)
    texts = [f"sample text number {i} about slicing\nwith a second line " * (1 + i % 3) for i in range(40)]
    jsonl = tmp_path / "calibration.jsonl"
    jsonl.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    plain = tmp_path / "calibration.txt"
    plain.write_bytes("\r\n".join(texts).encode())  # read as one text, line ends as \n
    whole = plain.read_text(encoding="utf-8")
    for path, as_before in ((jsonl, texts), (plain, [whole])):
        calibration = make_calibration(tokenizer, read_calibration(path), str(path), window, tokens)
        assert _same_batches(calibration.batches, _calibration_before(tokenizer, as_before, window, tokens))
        assert calibration.texts_sha256 == texts_digest(as_before[:_texts_read(tokenizer, as_before, window, tokens)])
    nano = load_tokenizer(NANO)
    from matlab.nano.world import calibration_text, make_world

    world_texts = calibration_text(make_world())
    calibration = make_calibration(nano, world_texts, "nano", window, tokens)
    assert _same_batches(calibration.batches, _calibration_before(nano, world_texts, window, tokens))


def test_a_long_text_is_tokenized_in_pieces_with_the_same_tokens(tiny_text, tmp_path):
    """With a byte-level tokenizer no token spans a cut: the windows of a file three pieces
    long are those of the whole text."""
    tokenizer = load_tokenizer(tiny_text)
    line = "a line of calibration text, with words\n"
    path = tmp_path / "long.txt"
    path.write_text(line * (3 * PIECE_CHARS // len(line)) + "end")
    tokens = 2 * PIECE_CHARS + 1000  # more than two pieces hold
    calibration = make_calibration(tokenizer, read_calibration(path), str(path), 1024, tokens, batch_size=4096)
    expected = _calibration_before(tokenizer, [path.read_text()], 1024, tokens, batch_size=4096)
    assert _same_batches(calibration.batches, expected)


class _CountingFile(io.FileIO):
    read_total = 0

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        _CountingFile.read_total += count or 0
        return count


class _CountingPath(type(Path())):
    def open(self, mode="r", *args, **kwargs):
        return io.BufferedReader(_CountingFile(self, "rb")) if mode == "rb" else super().open(mode, *args, **kwargs)


class _WordTokenizer:
    """Four characters a token; records how many characters it was given."""

    bos_token_id, eos_token_id = 2, 1

    def __init__(self) -> None:
        self.characters = 0

    def __call__(self, text: str, add_special_tokens: bool = False):
        self.characters += len(text)
        return type("Encoding", (), {"input_ids": [5] * (len(text) // 4)})()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_a_large_calibration_file_is_read_only_as_far_as_needed(tmp_path, suffix):
    size = 50 << 20
    path = _CountingPath(tmp_path / f"large{suffix}")
    line = json.dumps({"text": "calibration words " * 20}) + "\n" if suffix == ".jsonl" else "calibration words " * 20 + "\n"
    path.write_text(line * (size // len(line)))
    tokenizer = _WordTokenizer()
    _CountingFile.read_total = 0
    tracemalloc.start()
    try:
        calibration = make_calibration(tokenizer, read_calibration(path), str(path), 64, 128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert calibration.tokens == 2 * 64
    assert _CountingFile.read_total <= 2 * PIECE_CHARS and tokenizer.characters <= 2 * PIECE_CHARS
    assert peak < size // 4, f"peak {peak:,} bytes for a {size:,}-byte file"


def test_only_the_text_used_decides_the_search_identity(tiny_text, tmp_path):
    """Resuming with the same file and token count is the same search; an edit after the text
    the search used does not change it, an edit inside it does. A search whose record (from
    before the digest covered only the text used) has the whole file's digest is resumed too."""
    calibration = tmp_path / "calibration.jsonl"
    lines = [json.dumps({"text": f"sample text number {i} about slicing and more"}) + "\n" for i in range(200)]
    calibration.write_text("".join(lines))
    settings = SearchSettings(str(tiny_text), tmp_path / "search", max_params=300_000, calibration=calibration,
                              max_evals=4, window=32, calibration_tokens=128)
    first = run_search(settings)
    assert run_search(settings).summary["evaluated_now"] == 0
    calibration.write_text("".join(lines[:-1]) + '{"no": "text"}\n')  # far past the 128 tokens used
    assert run_search(settings).summary["evaluated_now"] == 0
    calibration.write_text("".join(lines))
    search_file = tmp_path / "search" / "search.json"
    summary = json.loads(search_file.read_text())
    whole = texts_digest(json.loads(line)["text"] for line in lines)
    assert summary["identity"]["calibration_sha256"] != whole
    search_file.write_text(json.dumps({**summary, "identity": {**summary["identity"], "calibration_sha256": whole}}))
    assert run_search(settings).summary["evaluated_now"] == 0  # recorded by an earlier version
    calibration.write_text(lines[1] + "".join(lines[1:]))  # the first text, used, changed
    with pytest.raises(MatformerError, match="holds a search with different calibration_sha256"):
        run_search(settings)
    assert first.summary["identity"]["calibration"] == str(calibration)


@pytest.mark.parametrize("name, content, message", [
    ("binary.txt", b"first line\nsecond line\n\x89PNG\x00\xff\xfe", "binary.txt: not UTF-8 text (line 3)"),
    ("binary.jsonl", b'{"text": "fine"}\n\xff\xfe{"text": 1}\n', "binary.jsonl: line 2 is not UTF-8 text"),
    ("fields.jsonl", b'{"text": "fine"}\n\n{"body": "x"}\n', "fields.jsonl: line 3 has no string field 'text'"),
    ("torn.jsonl", b'{"text": "fine"}\n{"text": "fin', "torn.jsonl: line 2 is not JSON"),
    ("blank.txt", b" \n\n\t\n", "blank.txt: no text in it"),
])
def test_unusable_calibration_files_are_one_line(tiny_text, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_calibration(load_tokenizer(tiny_text), read_calibration(path), str(path), 32, 4096)
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", str(tiny_text), "--out", str(out), "--max-params", "300K",
                                 "--calibration", str(path), "--window", "32", "--calibration-tokens", "4096"])
    _one_line_failure(result, message)
    assert not out.exists()


def test_a_bad_line_past_the_tokens_used_is_never_read(tiny_text, tmp_path):
    path = tmp_path / "calibration.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i} of the calibration"}) + "\n" for i in range(500))
                    + "not json at all\n")
    calibration = make_calibration(load_tokenizer(tiny_text), read_calibration(path), str(path), 32, 64)
    assert calibration.tokens == 64


def test_a_lone_surrogate_in_a_calibration_text_is_one_line(tiny_text, tmp_path):
    """`"\\ud800"` is valid JSON but no character: it cannot be hashed or tokenized as UTF-8."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "hello \\ud800"}\n')
    message = f"--calibration {path}: line 2 has \\ud800 in 'text', half of a surrogate pair and not UTF-8 text"
    with pytest.raises(InputError) as caught:
        make_calibration(load_tokenizer(tiny_text), read_calibration(path), str(path), 32, 4096)
    assert str(caught.value).startswith(message)
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "nano", "--out", str(out), *SEARCH_ARGS, "--calibration", str(path)])
    _one_line_failure(result, message)
    assert not out.exists()
    path.write_text('{"text": "hello \\ud83d\\ude00 and more text"}\n')  # a pair: one character, read
    assert make_calibration(load_tokenizer(tiny_text), read_calibration(path), str(path), 8, 8).tokens > 0


# -- the run directory's lock ----------------------------------------------------------------------

HOLDER = ("import sys\nfrom pathlib import Path\nfrom matlab.io.lock import run_directory_lock\n"
          "with run_directory_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n")


@pytest.fixture()
def holder():
    """Start a process that holds a directory's lock until its stdin closes."""
    processes = []

    def hold(directory: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in processes:
        process.stdin.close()
        process.wait(timeout=60)


def _reaped_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(directory: Path, **fields) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    path.write_text(json.dumps({"program": "matformer", "pid": _reaped_pid(), "host": socket.gethostname(),
                                "process_start": None, **fields}))
    return path


def test_a_live_lock_refuses_a_second_sweep_and_search(holder, tiny_text, suite_file, config_dir, run_copy):
    process = holder(run_copy)
    before = _snapshot(run_copy)
    expected = f"{run_copy} is in use by matformer (pid {process.pid} on {socket.gethostname()}); wait for it to " \
               "finish, or choose another --out"
    with pytest.raises(InputError) as caught:
        run_sweep(tiny_text, sorted(config_dir.glob("*.yaml")), run_copy, _sweep_settings(suite_file))
    assert str(caught.value) == expected
    result = runner.invoke(app, _sweep_command(tiny_text, config_dir, suite_file, run_copy))
    _one_line_failure(result, expected)
    assert _snapshot(run_copy) == before
    process.stdin.close()
    process.wait(timeout=60)
    assert not (run_copy / LOCK_FILE).exists()  # removed by its owner on the way out


def test_a_live_lock_refuses_a_search_and_creates_nothing(holder, tmp_path):
    out = tmp_path / "new" / "search"
    process = holder(out)
    result = runner.invoke(app, ["search", "nano", "--out", str(out), *SEARCH_ARGS])
    _one_line_failure(result, f"{out} is in use by matformer (pid {process.pid} on ")
    assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE]
    process.stdin.close()
    process.wait(timeout=60)
    assert not (tmp_path / "new").exists()  # the holder made the directories and removed them, empty


def test_a_stale_lock_is_taken_over_and_said(tiny_text, suite_file, config_dir, run_copy):
    stale = _write_lock(run_copy)
    dead = json.loads(stale.read_text())["pid"]
    with pytest.warns(MatformerWarning, match=rf"took over the lock of a run that was killed \(pid {dead} on .*, "
                                              "no longer running\\)"):
        assert run_sweep(tiny_text, sorted(config_dir.glob("*.yaml")), run_copy, _sweep_settings(suite_file)) == []
    assert not stale.exists()


def test_a_stale_lock_in_a_search_is_a_warning(search_copy):
    _write_lock(search_copy)
    result = run_search(SearchSettings("nano", search_copy, **SEARCH))
    assert result.summary["evaluated_now"] == 0 and not (search_copy / LOCK_FILE).exists()
    assert "took over the lock of a run that was killed" in result.warnings[0]


def test_lock_owners_that_are_gone_and_those_that_may_not_be(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    _write_lock(directory, pid=os.getpid())  # an earlier process with this pid (containers reuse pids)
    with run_directory_lock(directory) as held:
        assert "no longer running" in held.took_over
        assert json.loads((directory / LOCK_FILE).read_text())["pid"] == os.getpid()
        own = pytest.raises(InputError, match=f"is in use by matformer \\(pid {os.getpid()} on ")
        with own, run_directory_lock(directory):  # this process's own lock is never stale
            pass
    if Path(f"/proc/{os.getppid()}/stat").exists():
        _write_lock(directory, pid=os.getppid(), process_start="1")
        with run_directory_lock(directory) as held:
            assert f"pid {os.getppid()} is now another process" in held.took_over
    _write_lock(directory, host="elsewhere.example")
    elsewhere = pytest.raises(InputError, match=f"pid .* on elsewhere.example\\); wait for it to finish, or choose "
                                                f"another --out \\(if nothing runs there, delete {directory / LOCK_FILE}\\)")
    with elsewhere, run_directory_lock(directory):
        pass
    (directory / LOCK_FILE).write_text("")  # its owner killed between creating it and writing its pid
    with run_directory_lock(directory) as held:
        assert "took over an unreadable lock" in held.took_over
    assert sorted(path.name for path in directory.iterdir()) == []


LYING_HOLDER = HOLDER.replace("print('held'", "Path(sys.argv[1], '.lock').write_text(sys.argv[2])\n    print('held'")


def test_a_held_lock_is_refused_whatever_pid_its_record_names(tmp_path):
    """Liveness is the kernel's lock, not the pid: a run in another PID namespace (a container on
    the same host) records a pid that means nothing here, or one that looks dead."""
    directory = tmp_path / "run"
    record = json.dumps({"program": "matformer", "pid": _reaped_pid(), "host": socket.gethostname()})
    process = subprocess.Popen([sys.executable, "-c", LYING_HOLDER, str(directory), record], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match="is in use by matformer"), run_directory_lock(directory):
            pass
        assert (directory / LOCK_FILE).read_text() == record  # the holder's record is left alone
    finally:
        process.kill()  # no way out through its own clean-up: the kernel releases the lock
        process.wait(timeout=60)
    with run_directory_lock(directory) as held:
        assert "took over the lock of a run that was killed" in held.took_over


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_the_lock_goes_with_its_run_however_it_ends(tmp_path, interruption):
    directory = tmp_path / "a" / "b"
    with pytest.raises(interruption), run_directory_lock(directory):
        assert (directory / LOCK_FILE).is_file()
        raise interruption()
    assert not (tmp_path / "a").exists()  # created for the lock, left empty: removed
    (tmp_path / "kept").mkdir()
    with run_directory_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "result.json").write_text("{}")
    assert sorted(path.name for path in (tmp_path / "kept").iterdir()) == ["result.json"]


# -- outputs that overlap inputs -----------------------------------------------------------------

def test_a_report_never_replaces_the_run_it_reads(run_copy):
    before = _snapshot(run_copy)
    for out in (run_copy, run_copy.parent, run_copy / "report"):
        result = runner.invoke(app, ["report", str(run_copy), "--out", str(out), "--force"])
        _one_line_failure(result, "input")
        assert _snapshot(run_copy) == before


def test_a_sweep_run_directory_may_not_be_or_lie_inside_its_checkpoint(tiny_text, suite_file, config_dir, tmp_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_text, checkpoint)
    before = _snapshot(checkpoint)
    for out in (checkpoint, checkpoint / "run"):
        result = runner.invoke(app, _sweep_command(checkpoint, config_dir, suite_file, out))
        _one_line_failure(result, f"--out {out} ")
    assert _snapshot(checkpoint) == before


def test_a_sweep_may_run_in_the_folder_that_holds_its_configs(tiny_text, suite_file, tmp_path):
    """A run is added to, never replaced: a folder that holds its inputs is fine."""
    (tmp_path / "half.yaml").write_text("name: half\nlayers_skipped: [10, 11, 12, 13, 14]\nffn_widths: 128\n")
    result = runner.invoke(app, ["sweep", str(tiny_text), "--configs", str(tmp_path / "half.yaml"), "--suite",
                                 str(suite_file), "--out", str(tmp_path), "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "half.yaml").is_file() and (tmp_path / "results.jsonl").is_file()


def test_validate_reads_a_checkpoint_of_config_json_alone(tiny_text, tmp_path):
    (tmp_path / "ckpt").mkdir()
    shutil.copy(tiny_text / "config.json", tmp_path / "ckpt" / "config.json")
    (tmp_path / "c.yaml").write_text("name: half\nffn_widths: 128\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "c.yaml"), "--checkpoint", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
