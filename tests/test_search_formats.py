"""`search --formats`: widths, skips and weight formats as one search, budgeted in the bytes
of the GGUF file and scored at that precision."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.cli import app
from matlab.core.calibration import kl_to_reference, make_calibration, reference_distributions
from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.formats import FORMATS
from matlab.io.resolve import resolve_checkpoint
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.search.run import SearchSettings, calibration_texts, run_search
from matlab.slice_config import load_slice_config
from matlab.slice_config.bundled import resolve_config_entry
from matlab.slice_config.weight_formats import WeightFormats
from matlab.slicing.checks import check_config_files

runner = CliRunner()
NANO = resolve_checkpoint("nano")
BYTES = 3_000_000  # nano's text weights are ~10.4 MB in bf16: only quantized slices fit
FORMATS_SEARCHED = ("q8_0", "q5_0", "q4_0")


def _settings(out, **fields) -> SearchSettings:
    values = dict(max_bytes=BYTES, formats=FORMATS_SEARCHED, format_genes="layer", max_evals=80, window=64,
                  calibration_tokens=128)
    return SearchSettings("nano", out, **{**values, **fields})


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    return run_search(_settings(tmp_path_factory.mktemp("search-formats") / "run"))


def test_frontier_configs_fit_the_byte_budget_of_their_gguf_file(searched):
    facts, inventory = facts_from_checkpoint(NANO), inventory_from_checkpoint(NANO)
    frontier = sorted((searched.directory / "frontier").glob("*.yaml"))
    assert len(frontier) >= 2
    used = set()
    for path in frontier:
        config = load_slice_config(path)
        report = count_parameters(inventory, facts, SlicePlan.build(config, facts, str(path)), text_only=True)
        # `params` counts the same bytes the search budgeted, from the YAML the search wrote.
        assert report.format_bytes <= BYTES and report.format_bytes == config.reference.measured["weight_bytes"]
        used |= set(report.formats.split("/"))
    assert used & set(FORMATS_SEARCHED) and used <= set(FORMATS_SEARCHED) | {"f32", "f16"}
    assert all(not problems for problems in check_config_files(frontier, facts).values())
    timing = searched.summary["timing"]
    assert set(timing["quantize_seconds"]) == set(FORMATS_SEARCHED)


def test_the_objective_is_the_submodel_at_its_formats(searched):
    """The search's KL of its best slice equals the KL of the slice the harness evaluates from
    the frontier YAML (`select_submodel` at the config's formats), on the same calibration."""
    settings = _settings(searched.directory)
    loaded = load_model(NANO)
    texts, source = calibration_texts(settings)
    calibration = make_calibration(loaded.tokenizer, texts, source, settings.window, settings.calibration_tokens)
    reference = reference_distributions(loaded.model, calibration, settings.top_k)
    best = searched.summary["best"]
    config = load_slice_config(searched.directory / best["file"])
    quantized = kl_to_reference(select_submodel(loaded, config).model, calibration, reference)
    plain = kl_to_reference(select_submodel(loaded, config.model_copy(update={"weight_formats": None})).model,
                            calibration, reference)
    assert quantized == pytest.approx(best["value"], rel=1e-6)
    assert quantized > plain  # the formats cost quality, and the objective saw it


def test_resumed_search_with_formats_evaluates_nothing_twice(searched):
    again = run_search(_settings(searched.directory))
    assert again.summary["evaluated_now"] == 0 and again.summary["best"] == searched.summary["best"]


@pytest.mark.parametrize("arguments, expected", [
    (["--formats", "q4_k_m"], "--formats: 'q4_k_m' is a llama.cpp file type"),
    (["--formats", "q3"], "--formats: 'q3' is not a GGUF weight format"),
    (["--formats", "q4_0", "--widths", "512,200"], "--formats q4_0 with --widths 200: a down projection of that "
                                                    "width is not whole q4_0 blocks of 32"),
    (["--formats", "q4_0", "--max-bytes", "100KB"], "the budget is below the smallest valid submodel"),
    (["--formats", "q4_0", "--max-bytes", None, "--max-params", "2M"], "--formats: give --max-bytes"),
    (["--formats", "q8_0,q4_0", "--runtime", "mlx-lm"], "--formats: mlx-lm does not load q8_0, q4_0"),
    (["--formats", "bf16,q4_0", "--runtime", "transformers"], "--formats: transformers does not load q4_0"),
])
def test_bad_format_arguments_are_one_line_and_write_nothing(tmp_path, arguments, expected):
    options = {"--max-bytes": "3MB", "--max-evals": "5", "--window": "64", "--calibration-tokens": "128"}
    extra = []
    for key, value in zip(arguments[::2], arguments[1::2]):
        if key in options:
            options[key] = value
        else:
            extra += [key, value]
    flat = [item for key, value in options.items() if value is not None for item in (key, value)]
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", "nano", "--out", str(out), *flat, *extra])
    assert result.exit_code != 0 and expected in result.stderr, result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert "Traceback" not in result.output and not any(out.iterdir() if out.exists() else [])


def test_a_runtime_restricts_the_formats_and_the_space(runtime_model, tmp_path):
    """On the E4B-shaped model llama.cpp loads: the search for llama.cpp proposes only slices
    that pass its rules, formats included; transformers is never said to run a block format."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", str(runtime_model), "--out", str(out), "--max-bytes", "6MB",
                                 "--formats", "q8_0,q4_0", "--format-genes", "layer", "--runtime", "llama.cpp",
                                 "--max-evals", "70",
                                 "--window", "32", "--calibration-tokens", "64", "--calibration",
                                 str(_calibration_file(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    facts = facts_from_checkpoint(runtime_model)
    frontier = [out / entry["file"] for entry in summary["frontier"]]
    assert frontier and all(not problems for problems in
                            check_config_files(frontier, facts, runtime="llama.cpp").values())
    for entry in summary["frontier"]:
        assert "llama.cpp" in entry["runs_in"] and "transformers" not in entry["runs_in"]
        assert len(set(entry["ffn_widths"])) == 1  # llama.cpp builds every layer at one width
    journal = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    named = {fmt for record in journal for fmt in json.dumps(record["weight_formats"]).split('"') if fmt in FORMATS}
    assert named <= {"q8_0", "q4_0"}


def test_group_genes_give_attention_and_ffn_their_own_formats():
    from matlab.search.space import SearchSpace

    facts = facts_from_checkpoint(NANO)
    loaded = load_model(NANO)
    space = SearchSpace(facts, inventory_from_checkpoint(NANO), loaded, None, None, FORMATS_SEARCHED, "group")
    genes = dict(space.full_genes)
    assert genes["format_attention_3"] == genes["format_ffn_3"] == "q8_0"
    genes.update(format_attention_3="q4_0", format_ffn_4="q5_0", format_ple="q4_0")
    layers = space.decode(genes).weight_formats.for_layers(range(facts.num_layers))
    assert (layers[3].attention, layers[3].ffn, layers[4].attention, layers[4].ffn) == ("q4_0", "q8_0", "q8_0", "q5_0")
    assert space.narrower("format_ffn_0", "q8_0") == "q5_0" and space.narrower("format_ffn_0", "q4_0") is None
    smallest = space.smallest()
    assert smallest.weight_formats.per_layer_embeddings == "q4_0" and smallest.weight_bytes < space.decode(
        space.full_genes).weight_bytes


def _calibration_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(" ".join(f"word{n % 37} and more text number {n}." for n in range(400)))
    return path


def test_a_preset_baseline_is_measured_as_the_file_a_user_downloads(tmp_path):
    """`--baseline q4_k_m --baseline-config nano-e2b`: the preset on the full model and on
    nano-e2b is costed at its file's bytes (what `params` counts for that config), scored at its
    per-tensor types (the harness's KL of the same config), and compared with the frontier."""
    e2b = tmp_path / "e2b.yaml"
    e2b.write_text(next(path for path in resolve_config_entry("nano") if path.stem == "nano-e2b").read_text())
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", "nano", "--out", str(out), "--max-bytes", "4MB", "--formats", "q8_0,q4_k",
                                 "--baseline", "q4_k_m", "--baseline-config", str(e2b), "--max-evals", "12",
                                 "--window", "64", "--calibration-tokens", "128", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    baselines = {entry["name"]: entry for entry in summary["baselines"]}
    assert set(baselines) == {"full@q4_k_m", "nano-E2B@q4_k_m"}
    facts, inventory = facts_from_checkpoint(NANO), inventory_from_checkpoint(NANO)
    config = load_slice_config(e2b).model_copy(update={"weight_formats": WeightFormats(preset="q4_k_m")})
    report = count_parameters(inventory, facts, SlicePlan.build(config, facts, "e2b"), text_only=True)
    assert baselines["nano-E2B@q4_k_m"]["weight_bytes"] == report.format_bytes
    assert baselines["full@q4_k_m"]["weight_bytes"] > report.format_bytes
    loaded = load_model(NANO)
    settings = _settings(out, max_bytes=4_000_000, window=64, calibration_tokens=128)
    texts, source = calibration_texts(settings)
    calibration = make_calibration(loaded.tokenizer, texts, source, settings.window, settings.calibration_tokens)
    reference = reference_distributions(loaded.model, calibration, settings.top_k)
    measured = kl_to_reference(select_submodel(loaded, config).model, calibration, reference)
    assert measured == pytest.approx(baselines["nano-E2B@q4_k_m"]["value"], rel=1e-6)
    journal = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [record["phase"] for record in journal[:2]] == ["baseline", "baseline"]
    # A baseline within the budget is a candidate like any other: nothing on the frontier is worse at fewer bytes.
    for entry in summary["baselines"]:
        if entry["within_budget"]:
            assert any(front["weight_bytes"] <= entry["weight_bytes"] and front["value"] <= entry["value"]
                       for front in summary["frontier"])


@pytest.mark.parametrize("arguments, expected", [
    (["--baseline", "q4_k_m"], "--baseline: give --formats too"),
    (["--formats", "q8_0", "--baseline", "q4_k_x"], "--baseline q4_k_x:"),
    (["--formats", "q8_0", "--baseline-config", "x.yaml"], "--baseline-config: name the preset"),
])
def test_bad_baselines_are_one_line(tmp_path, arguments, expected):
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", "nano", "--out", str(out), "--max-bytes", "3MB", *arguments])
    assert result.exit_code != 0 and expected in result.stderr, result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr
    assert not out.exists()
