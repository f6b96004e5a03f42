"""The slicer benchmark at small scale (the full-size run is in reports/benchmarks.md)."""

from __future__ import annotations

from matlab.bench.process import BenchError
from matlab.bench.slice_bench import bench_slice, verify_same_tensors
from matlab.io.reader import CheckpointFiles
from matlab.slice_config import SliceConfig, dump_slice_config
from matlab.slicing.slicer import slice_checkpoint


def test_bench_slice_measures_and_verifies(tiny_multimodal, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(dump_slice_config(SliceConfig(name="c", layers_skipped=[10, 11], ffn_widths=128)))
    result = bench_slice(tiny_multimodal, config, tmp_path / "work", text_only=True)
    methods = result["methods"]
    assert set(methods) == {"ours", "naive", "copy"} and result["tensors_verified_equal"] > 100
    assert all(m["seconds"] > 0 and m["peak_rss_bytes"] > 0 for m in methods.values())
    # The naive slicer loads whole tensors to keep part of them; ours reads the kept rows only
    # (whole rows where columns are cut), and writes exactly the output's tensor bytes.
    written = sum(info.nbytes for info in CheckpointFiles(tmp_path / "work" / "ours").tensors.values())
    assert methods["naive"]["bytes_read"] > methods["ours"]["bytes_read"] >= methods["ours"]["bytes_written"] == written
    assert methods["copy"]["bytes_written"] >= written
    assert result["tensors_verified_equal"] == len(CheckpointFiles(tmp_path / "work" / "ours").tensors)
    assert result["ours_over_naive_seconds"] == methods["ours"]["seconds"] / methods["naive"]["seconds"]
    assert result["ours_over_copy_seconds"] == methods["ours"]["seconds"] / methods["copy"]["seconds"]


def test_verify_detects_differences(tiny_text, tmp_path):
    import shutil

    import pytest

    slice_checkpoint(tiny_text, SliceConfig(name="a", ffn_widths=128), tmp_path / "a")
    slice_checkpoint(tiny_text, SliceConfig(name="b", ffn_widths=[128] * 14 + [127]), tmp_path / "b")
    with pytest.raises(BenchError, match="shapes"):
        verify_same_tensors(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    shard = sorted((tmp_path / "c").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor's data
    shard.write_bytes(bytes(data))
    with pytest.raises(BenchError, match="values differ"):
        verify_same_tensors(tmp_path / "a", tmp_path / "c")
    assert verify_same_tensors(tmp_path / "a", tmp_path / "a") > 0


def test_bench_sweep_elastic_and_materialized_agree(tmp_path):
    from matlab.bench.sweep_bench import bench_sweep
    from matlab.demo import demo_inputs

    configs, suite = demo_inputs()
    chosen = [path for path in configs if path.stem in ("nano-e2b", "nano-l4")]
    result = bench_sweep("nano", chosen, suite, tmp_path / "work", limit=3)
    assert result["scores_compared"] >= 2 * 3 and result["scores_identical"] == result["scores_compared"]
    assert all(mode["sweep_seconds"] > 0 and mode["peak_rss_bytes"] > 0 for mode in result["modes"].values())
    assert (tmp_path / "work" / "materialize" / "results.jsonl").is_file()


def test_bench_switch_measures_both_paths_and_compares_logits(tiny_text, tmp_path):
    from matlab.bench.sweep_bench import bench_switch

    config = tmp_path / "c.yaml"
    config.write_text(dump_slice_config(SliceConfig(name="c", layers_skipped=[10, 11], ffn_widths=128)))
    result = bench_switch(tiny_text, config, tmp_path / "work", dtype="float32", builds=3)
    elastic, disk = result["modes"]["elastic"], result["modes"]["materialize"]
    assert len(elastic["build_seconds_each"]) == 3 and elastic["load_full_seconds"] > 0
    assert disk["slice_seconds"] > 0 and disk["load_slice_seconds"] > 0
    assert result["max_logit_difference"] == 0.0  # the elastic submodel computes exactly what the slice does
    assert not (tmp_path / "work" / "sliced").exists()


def test_bench_bad_input_is_one_line_and_writes_nothing(tiny_text, tmp_path):
    from typer.testing import CliRunner

    from matlab.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(dump_slice_config(SliceConfig(name="c", ffn_widths=[128] * 3)))
    runner = CliRunner()
    missing = runner.invoke(app, ["bench", "switch", "--checkpoint", str(tmp_path / "nowhere"), "--config", str(config),
                                  "--work-dir", str(tmp_path / "work")])
    assert missing.exit_code != 0 and "nowhere" in missing.output and "Traceback" not in missing.output
    wrong = runner.invoke(app, ["bench", "switch", "--checkpoint", str(tiny_text), "--config", str(config),
                                "--work-dir", str(tmp_path / "work")])
    assert wrong.exit_code != 0 and "ffn_widths" in wrong.output
    assert not (tmp_path / "work").exists()


def test_bench_nano_capacity_cli_prints_points_and_command():
    import json

    from typer.testing import CliRunner

    from matlab.cli import app

    result = CliRunner().invoke(app, ["bench", "nano-capacity", "--people", "16", "--steps", "2", "--every", "1",
                                      "--fact-share", "0.85", "--ffn", "64", "--frozen-names", "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert [point["step"] for point in numbers["points"]] == [1, 2]
    assert all(0 <= point[stem] <= 1 for point in numbers["points"] for stem in ("nano-e4b", "nano-e2b", "nano-l4"))
    assert 0.07 < numbers["chance"] < 0.08 and numbers["settings"]["frozen_names"] is True
    assert numbers["settings"]["ffn"] == 64
    assert numbers["command"].endswith("--fact-share 0.85 --ffn 64 --seed 0 --frozen-names")


def test_bench_search_compares_strategies_and_baselines(tmp_path):
    from matlab.bench.search_bench import bench_search
    from matlab.slice_config.bundled import resolve_suite

    budget = 2_200_000
    result = bench_search("nano", [budget], resolve_suite("nano"), tmp_path / "work", max_evals=45, seeds=(0,),
                          random_count=3, limit=1, window=64, calibration_tokens=256)
    numbers = result["budgets"][str(budget)]
    assert set(numbers["strategies"]) == {"seeded-nsga2", "evopress", "nsga2", "greedy", "random"}
    assert all(run["best_value"] is None or run["feasible"] > 0 for runs in numbers["strategies"].values()
               for run in runs)
    scored = numbers["suite"]
    assert {"search", "uniform", "random-00", "random-01", "random-02"} <= set(scored)
    assert "nano-e2b" not in scored  # 2.38M does not fit 2.2M
    assert all(0.85 * budget <= scored[f"random-{i:02d}"]["effective_params"] <= budget for i in range(3))
    assert scored["search"]["effective_params"] <= budget and scored["uniform"]["effective_params"] <= budget
    assert all("nano_heldout:word_perplexity" in row for row in scored.values())


def test_bench_search_peers_runs_both_algorithms_in_budget_and_scores_them(tmp_path):
    """Both strategies at equal evaluations, every best within its budget, each scored on the
    suite with its stderr; the calibration texts exist and differ."""
    from matlab.bench.search_peers import bench_search_peers, calibration_files
    from matlab.slice_config.bundled import resolve_suite

    result = bench_search_peers(resolve_suite("nano"), tmp_path / "work", max_evals=10, seeds=(0,), window=64,
                                calibration_tokens=256, limit=2, spaces=("depth",), calibration=False)
    runs = result["runs"]
    assert {(run["strategy"], run["share"]) for run in runs} == {(s, share) for s in ("seeded-nsga2", "evopress")
                                                                 for share in (0.75, 0.6)}
    for run in runs:
        assert run["best_kl"] is not None and run["first_within_budget"] == 0  # every strategy starts inside
        assert run["effective_params"] <= run["budget"] and run["layers_skipped"]
        assert run["suite"]["nano_facts:acc"][1] is not None  # a score with its stderr
    texts = calibration_files(tmp_path / "texts")
    assert texts["world"] is None and texts["held-out"].read_text() != texts["unseen"].read_text()


def test_bench_search_peers_bad_space_is_one_line_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from matlab.cli import app

    result = CliRunner().invoke(app, ["bench", "search-peers", "--spaces", "depth,width", "--work-dir",
                                      str(tmp_path / "work")])
    assert result.exit_code == 2 and "--spaces width: choose from depth, formats, joint" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "work").exists()
