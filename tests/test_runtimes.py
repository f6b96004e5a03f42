"""Runtime rules: each accepts a config that satisfies it and rejects one that breaks it, named."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from matlab.architecture import facts_from_arch
from matlab.cli import app
from matlab.errors import InputError, SliceConfigError
from matlab.nano.model import nano_config, nano_facts
from matlab.plan import SlicePlan
from matlab.runtimes import RUNTIMES, runs_in, runtime_violations
from matlab.slice_config import SliceConfig
from matlab.slicer import slice_checkpoint

runner = CliRunner()
E4B = facts_from_arch("gemma-3n-e4b")
MIXED = [8192] * 15 + [16384] * 15


def _plan(skipped, widths, facts=E4B):
    return SlicePlan.build(SliceConfig(name="c", layers_skipped=skipped, ffn_widths=widths), facts)


def _rules(plan, runtime):
    return [violation.rule for violation in runtime_violations(plan, runtime)]


@pytest.mark.parametrize("runtime, rule, good, bad", [
    ("mlx-vlm", "uniform-width", ([20, 21, 22, 23, 24], 8192), ([20, 21, 22, 23, 24], MIXED)),
    ("llama.cpp", "uniform-width", ([20, 21, 22, 23, 24], 8192), ([20, 21, 22, 23, 24], MIXED)),
    ("ollama", "uniform-width", ([], 16384), ([20, 21, 22, 23, 24], MIXED)),
    ("llama.cpp", "kv-prefix", ([25, 26, 27, 28, 29], 8192), ([3, 20, 21, 22, 23], 8192)),
    ("llama.cpp", "aligned-skips", ([30, 31, 32, 33, 34], 8192), ([21, 22, 23, 24, 25], 8192)),
    # Skipping layers 15..17 leaves 18 and 19 as the last two before the shared region: fine.
    # On a base whose producers are not the last two layers the hard-coded offsets break:
    ("vllm", "kv-sources", ([15, 16, 17], 16384), None),
])
def test_each_rule_accepts_and_rejects(runtime, rule, good, bad):
    assert rule not in _rules(_plan(*good), runtime)
    if bad is not None:
        violations = runtime_violations(_plan(*bad), runtime)
        assert rule in [v.rule for v in violations]
        assert all(str(v).startswith(f"{runtime}: ") for v in violations)


def test_kv_sources_rule_on_a_base_with_another_layout():
    """A base whose last layer before the shared region is a sliding one (here: nano with its
    full-attention layer 9 moved to 8): vLLM's `first_shared - 1` would read a sliding cache."""
    config = nano_config(448)
    types = list(config.layer_types)
    types[8], types[9] = "full_attention", "sliding_attention"
    config.layer_types = types
    facts = nano_facts(config)
    violations = runtime_violations(_plan([], 512, facts), "vllm")
    assert [v.rule for v in violations] == ["kv-sources"]
    assert "layers [8, 9] (full_attention, sliding_attention)" in violations[0].message
    assert runtime_violations(_plan([], 512, facts), "mlx-lm") == []  # derives producers from layer_types


def test_official_e2b_runs_everywhere_and_mixed_widths_do_not():
    assert runs_in(_plan([20, 21, 22, 23, 24], 8192)) == list(RUNTIMES)
    assert runs_in(_plan([20, 21, 22, 23, 24], MIXED)) == ["transformers", "vllm", "mlx-lm"]


def test_unknown_runtime_is_named():
    with pytest.raises(InputError, match="--runtime vllm2: unknown runtime; choose one of transformers, vllm"):
        runtime_violations(_plan([], 16384), "vllm2")


def test_validate_runtime_prints_one_line_per_rule(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nlayers_skipped: [3, 21]\nffn_widths: [8192, 16384, " + ", ".join(["8192"] * 31) + "]\n")
    result = runner.invoke(app, ["validate", str(bad), "--arch", "gemma-3n-e4b", "--runtime", "llama.cpp"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [line.split("(")[1].split(")")[0] for line in lines] == ["uniform-width", "kv-prefix", "aligned-skips"]
    unknown = runner.invoke(app, ["validate", str(bad), "--arch", "gemma-3n-e4b", "--runtime", "tgi"])
    assert unknown.exit_code == 2 and "unknown runtime" in unknown.stderr


def test_slice_for_ollama_writes_a_scalar_width_and_the_card_says_where_it_runs(tiny_text, tmp_path):
    uniform = SliceConfig(name="u", layers_skipped=[10, 11, 12, 13, 14], ffn_widths=128)
    slice_checkpoint(tiny_text, uniform, tmp_path / "ollama", runtime="ollama")
    assert json.loads((tmp_path / "ollama" / "config.json").read_text())["intermediate_size"] == 128
    card = (tmp_path / "ollama" / "README.md").read_text()
    assert "- runs in: transformers, vllm, mlx-lm, mlx-vlm, llama.cpp, ollama" in card
    mixed = SliceConfig(name="m", ffn_widths=[128, 256] * 7 + [128])
    with pytest.raises(SliceConfigError, match="runtime ollama \\(uniform-width\\)"):
        slice_checkpoint(tiny_text, mixed, tmp_path / "mixed", runtime="ollama")
    assert not (tmp_path / "mixed").exists()
