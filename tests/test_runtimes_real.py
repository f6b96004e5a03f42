"""Conformance runs in the real runtimes: what each one does with each slice kind must be what
`matlab/runtimes/` predicts, and where it runs its log-probs must be transformers'.

Opt in with `-m runtimes` after `matformer runtimes install ...` (`.ci/runtimes` does both);
the llama.cpp cases are also marked `llama_cpp` (it compiles from source). A runtime that is
not installed fails here with the command that installs it: asking for these tests is asking
for that runtime.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from matlab.bench.runtime_matrix import E4B_SHAPED, NANO, planned_runs, run_case
from matlab.bench.serving import post, vllm_server
from matlab.io.resolve import resolve_checkpoint
from matlab.runtimes.conform import ANOTHER_MODEL, CRASHES, REFUSES, RUNS, conform
from matlab.runtimes.envs import interpreter
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

pytestmark = pytest.mark.runtimes
LLAMA_CPP = pytest.mark.llama_cpp


@pytest.fixture(scope="module")
def bases(runtime_model) -> dict[str, Path]:
    return {E4B_SHAPED: runtime_model, NANO: resolve_checkpoint("nano")}


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime-slices")


def _rows(runtime: str, bases: dict[str, Path], slices: Path):
    interpreter(runtime)  # InputError naming `matformer runtimes install RUNTIME` when it is missing
    runs = planned_runs(bases, (runtime,))
    assert runs, f"no matrix case for {runtime}"
    return [run_case(run, bases[run.base], slices) for run in runs]


def _check_matrix(rows) -> dict[tuple[str, str, str, str | None], object]:
    wrong = [f"{row.base} {row.kind.name} {row.case.layout} {row.case.weight_type}: measured "
             f"{row.result.line()}; predicted {row.predicted} ({row.reason})" for row in rows if not row.agrees]
    assert not wrong, "rules disagree with the runtime:\n" + "\n".join(wrong)
    for row in rows:
        if row.result.verdict == RUNS:  # log-probs within tolerance, and nearly always the same next token
            assert row.result.max_abs_diff <= row.result.tolerance
            # near-ties flip under quantization (measured: Q8_0 63/64, Q4_K_M 60-61/64)
            assert row.result.top1_agree >= 0.9 * row.result.positions, row.result.line()
    return {(row.base, row.kind.name, row.case.layout, row.case.weight_type): row.result for row in rows}


def test_mlx_lm_runs_its_layout_and_refuses_text_only(bases, slices):
    results = _check_matrix(_rows("mlx-lm", bases, slices))
    assert results[(E4B_SHAPED, "mixed-widths", "mlx-lm", None)].max_abs_diff < 1e-4  # float32: rounding only
    assert results[(E4B_SHAPED, "skip-before-shared", "mlx-lm", None)].verdict == RUNS
    refused = results[(E4B_SHAPED, "unsliced", "text-only", None)]
    assert refused.verdict == REFUSES and "gemma3n_text" in refused.message


def test_vllm_runs_every_slice_kind_through_the_plugin_and_its_own_class_computes_another_model(bases, slices):
    """Layout "vllm" (what `slice --runtime vllm` writes: the plugin's architecture) runs every
    slice kind on both bases within the tolerance; transformers' text-only checkpoint, which
    names vLLM's own class, computes another model (the state before the plugin)."""
    results = _check_matrix(_rows("vllm", bases, slices))
    plugin = {key: result for key, result in results.items() if key[2] == "vllm"}
    assert {key[:2] for key in plugin} == {(base, kind) for base in (E4B_SHAPED, NANO) for kind in
                                           ("unsliced", "e2b-shaped", "uniform-half", "mixed-widths",
                                            "skip-before-shared", "unaligned-skip")}
    assert all(result.verdict == RUNS for result in plugin.values()), [r.line() for r in plugin.values()]
    own = [result for key, result in results.items() if key[2] == "text-only"]
    assert own and all(result.verdict == ANOTHER_MODEL and result.max_abs_diff > 10 * result.tolerance
                       for result in own)  # not rounding: the per-layer embeddings are missing


def test_vllm_without_the_plugin_refuses_the_slice_by_its_architecture(runtime_model, tmp_path, monkeypatch):
    """A vLLM that does not load our plugin never computes the slice silently wrong: it refuses
    the architecture the slice names, in its own words."""
    from matlab.runtimes.vllm_plugin import ARCHITECTURE

    interpreter("vllm")
    out = tmp_path / "slice"
    slice_checkpoint(runtime_model, SliceConfig(name="half", ffn_widths=64), out, runtime="vllm")
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")  # an allow-list of vLLM's own plugins: not ours
    result = conform(out, "vllm")
    assert result.verdict == REFUSES and ARCHITECTURE in result.message and "not supported" in result.message, \
        result.line()


PROMPTS = ("The capital of", "Alice has 3 apples and", "Once upon a time")


def _greedy_pairs(url: str, model_name: str, model, tokenizer, tokens: int = 12) -> list[tuple[list[int], list[int]]]:
    """(served, transformers') greedy continuations of each prompt, as token ids."""
    import torch

    pairs = []
    for text in PROMPTS:
        ids = tokenizer(text).input_ids
        answer = post(f"{url}/v1/completions", {"model": model_name, "prompt": ids, "max_tokens": tokens,
                                                 "temperature": 0, "logprobs": 1, "return_tokens_as_token_ids": True})
        served = [int(token.removeprefix("token_id:")) for token in answer["choices"][0]["logprobs"]["tokens"]]
        with torch.no_grad():
            generated = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)[0, len(ids):]
        pairs.append((served, generated.tolist()))
    return pairs


def test_vllm_serve_answers_a_slice_with_transformers_greedy_continuations(tmp_path):
    """`vllm serve` on a nano slice written by `slice --runtime vllm`, on the loopback address:
    the completions endpoint's greedy continuations of a few prompts (token ids in, token ids
    out) are transformers' greedy generation of the same slice; the server is stopped after."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    interpreter("vllm")
    out = tmp_path / "slice"
    slice_checkpoint(resolve_checkpoint("nano"), SliceConfig(name="e2b-like", layers_skipped=(10, 11, 12, 13, 14),
                                                             ffn_widths=256), out, runtime="vllm")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with vllm_server(out, tmp_path / "serve.log") as url:
        pairs = _greedy_pairs(url, "slice", model, AutoTokenizer.from_pretrained(out))
    assert all(served == generated for served, generated in pairs), pairs


def test_vllm_serves_a_sliced_lora_adapter_as_transformers_and_peft_run_it(tmp_path):
    """A LoRA adapter trained on nano, cut with the slice (`slice --runtime vllm --adapter`),
    served by vLLM with --enable-lora through the plugin's class: its greedy continuations are
    transformers + PEFT's on the same slice and adapter, and differ from the slice's without it."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    interpreter("vllm")
    nano = resolve_checkpoint("nano")
    base = get_peft_model(AutoModelForCausalLM.from_pretrained(nano, dtype=torch.float32),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "gate_proj",
                                                                         "up_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in base.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which would test nothing
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    base.save_pretrained(tmp_path / "lora")
    out = tmp_path / "slice"
    slice_checkpoint(nano, SliceConfig(name="e2b-like", layers_skipped=(10, 11, 12, 13, 14), ffn_widths=256), out,
                     runtime="vllm", adapter=tmp_path / "lora")
    tokenizer = AutoTokenizer.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32),
                                        out / "adapter").eval()
    with vllm_server(out, tmp_path / "serve.log", "--enable-lora", "--max-lora-rank", "8", "--lora-modules",
                     f"sliced-lora={out / 'adapter'}") as url:
        with_adapter = _greedy_pairs(url, "sliced-lora", adapted, tokenizer)
        without = _greedy_pairs(url, "slice", plain, tokenizer)
    assert all(served == generated for served, generated in with_adapter), with_adapter
    assert all(served == generated for served, generated in without), without
    assert [served for served, _ in with_adapter] != [served for served, _ in without]  # the adapter changed it


def test_mlx_vlm_refuses_slices_without_towers(bases, slices):
    results = _check_matrix(_rows("mlx-vlm", bases, slices))
    assert all(result.verdict == REFUSES and "vision_tower" in result.message for result in results.values())


@LLAMA_CPP
def test_llama_cpp_gguf_matches_rules(bases, slices):
    results = _check_matrix(_rows("llama.cpp", bases, slices))
    assert results[(E4B_SHAPED, "unaligned-skip", "gguf", "f32")].verdict == RUNS  # no aligned-skips rule
    assert all(result.max_abs_diff < 0.01 and result.top1_agree >= result.positions - 1
               for (_, _, _, weight_type), result in results.items() if weight_type == "f32" and result.runs)
    crash = results[(E4B_SHAPED, "skip-before-shared", "gguf", "f32")]
    assert crash.verdict == CRASHES and "GGML_ASSERT" in crash.message
    assert results[(E4B_SHAPED, "mixed-widths", "gguf", "f32")].verdict == REFUSES
    assert results[(NANO, "unsliced", "gguf", "f32")].verdict == REFUSES
    quantized = results[(E4B_SHAPED, "e2b-shaped", "gguf", "q4_k_m")]
    assert quantized.verdict == RUNS and quantized.max_abs_diff > results[(E4B_SHAPED, "e2b-shaped", "gguf",
                                                                           "f32")].max_abs_diff


@LLAMA_CPP
def test_slice_runtime_llama_cpp_then_conform_cli_agree(runtime_model, tmp_path):
    """The user's path: `slice --runtime llama.cpp` writes a slice the rules accept, and it runs."""
    config = SliceConfig(name="user", layers_skipped=(20, 21, 22, 23, 24), ffn_widths=128)
    slice_checkpoint(runtime_model, config, tmp_path / "slice", text_only=True, runtime="llama.cpp")
    result = conform(tmp_path / "slice", "llama.cpp", weight_type="q8_0")
    assert result.verdict == RUNS, result.line()


@LLAMA_CPP
@pytest.mark.parametrize("case", ["unsliced-q4_0", "mixed-per-layer", "all-q4_0-skips"])
def test_llama_cpp_kl_at_weight_formats_equals_ours(runtime_model, tmp_path, case):
    """The KL our evaluation gives a slice at its weight formats is llama.cpp's on the exported
    GGUF (a type per tensor): measured within 2.4e-5 on KLs of 2e-5 to 0.016 (reports/benchmarks.md)."""
    from matlab.arch.facts import facts_from_checkpoint
    from matlab.bench.formats_kl import format_cases
    from matlab.bench.gguf_kl import compare_kl

    config, = [config for config in format_cases(facts_from_checkpoint(runtime_model)) if config.name == case]
    result = compare_kl(runtime_model, config, tmp_path)
    assert result.counted_bytes == result.file_tensor_bytes  # what the search budgets is what the file holds
    assert abs(result.difference) <= 1e-4, result.as_dict()
    assert result.ours - result.unquantized > 10 * abs(result.difference)  # the formats' cost is what is compared
    assert abs(result.top1_ours - result.top1_llama_cpp) <= 2


# -- K-quants and presets: our bytes, types and KL are llama.cpp's -------------------------------

@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> Path:
    """The E4B-shaped test model at hidden 256: every weight llama-quantize quantizes is whole
    256-element super-blocks."""
    from matlab.runtimes.testmodel import write_runtime_test_model

    return write_runtime_test_model(tmp_path_factory.mktemp("wide") / "model", seed=3, hidden=256)


def _same_bytes_as_llama_cpp(sliced: Path, gguf_file: Path) -> int:
    """Every quantized tensor of the file equals our quantizer's bytes of the slice's own values;
    returns how many were compared."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    from matlab.formats import quantize

    written = {tensor.name: tensor for tensor in gguf.GGUFReader(gguf_file).tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, 64)
    compared = 0
    for shard in sorted(sliced.glob("*.safetensors")):
        with safe_open(shard, "np") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is no dict
                gguf_name = names.get_name(name, try_suffixes=(".weight",))
                tensor = written.get(gguf_name)
                kind = tensor.tensor_type.name.lower() if tensor is not None else None
                if kind is None or kind in ("f32", "f16", "bf16"):
                    continue
                values = handle.get_tensor(name).astype(np.float32)
                if tensor.data.shape[0] != values.shape[0]:  # the per-layer table: padded to the vocabulary
                    continue
                assert np.array_equal(quantize(values, kind).reshape(-1), np.asarray(tensor.data).reshape(-1)), name
                compared += 1
    return compared


@LLAMA_CPP
@pytest.mark.parametrize("preset", ["q4_k_m", "q4_k_s", "q5_k_m", "q3_k_m", "q6_k", "q8_0", "q2_k"])
def test_a_preset_is_the_file_llama_quantize_writes(wide_model, tmp_path, preset):
    """`weight_formats: {preset: ...}` counts the types and bytes of the file llama-quantize
    writes from the model, tensor by tensor (export checks both), every quantized tensor's bytes
    are our quantizer's, and our KL at the preset is llama.cpp's (measured 1e-5 to 8e-5 apart,
    reports/benchmarks.md)."""
    from matlab.bench.gguf_kl import compare_kl

    config = SliceConfig(name=preset, ffn_widths=1024, weight_formats={"preset": preset})
    result = compare_kl(wide_model, config, tmp_path)
    assert result.counted_bytes == result.file_tensor_bytes
    assert _same_bytes_as_llama_cpp(tmp_path / "slice", tmp_path / "slice.gguf") > 100
    assert abs(result.difference) <= 1e-4, result.as_dict()


@LLAMA_CPP
def test_mixed_k_quants_per_tensor_are_the_file_llama_quantize_writes(wide_model, tmp_path):
    from matlab.bench.gguf_kl import compare_kl

    layers = [{"attention": "q4_k", "ffn": "q5_k", "count": 10}, {"attention": "q6_k", "ffn": "q3_k", "count": 10},
              {"attention": "q2_k", "ffn": "q4_0", "count": 15}]
    config = SliceConfig(name="mixed-k", ffn_widths=1024,
                         weight_formats={"default": "q8_0", "embeddings": "q6_k", "per_layer_embeddings": "q4_k",
                                         "layers": layers})
    result = compare_kl(wide_model, config, tmp_path)
    assert result.counted_bytes == result.file_tensor_bytes
    assert _same_bytes_as_llama_cpp(tmp_path / "slice", tmp_path / "slice.gguf") > 100
    assert abs(result.difference) <= 1e-4, result.as_dict()
    assert result.ours - result.unquantized > 10 * abs(result.difference)
