"""K-quants and llama.cpp's presets as weight formats: ggml's own quantizers give the bytes
(the same `ggml_quantize_chunk` llama-quantize calls), gguf's independent numpy dequantizers
read them back bit for bit, byte counts are gguf's, and a preset's per-tensor types follow
llama.cpp's rules (checked against the file llama-quantize writes in tests/test_runtimes_real.py)."""

from __future__ import annotations

import numpy as np
import pytest

from matlab.formats import FORMATS, quantize, round_trip, tensor_bytes
from matlab.formats.presets import PRESETS, PresetTensor, preset_types, use_more_bits

K_QUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
RNG = np.random.default_rng(5)


def _rows(count: int, length: int) -> np.ndarray:
    """Rows of every kind the quantizers must handle: gaussian, heavy tails, constant, zero, sparse."""
    rows = RNG.standard_normal((count, length)).astype(np.float32) * 0.02
    rows[1] = RNG.standard_t(2, length) * 0.05
    rows[2] = 0.25
    rows[3] = 0.0
    rows[4, ::7] = 3.0
    rows[5] *= 1e-6
    return rows


@pytest.mark.parametrize("fmt", K_QUANTS)
def test_k_quants_are_formats_with_gguf_byte_counts_and_gguf_reads_them_back(fmt):
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    assert fmt in FORMATS
    values = _rows(8, 2048)
    stored = quantize(values, fmt)
    elements, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[fmt.upper()]]
    assert stored.dtype == np.uint8 and stored.shape == (8, 2048 // elements * nbytes)
    assert stored.nbytes == tensor_bytes((8, 2048), fmt)
    # gguf's dequantizer is an independent reading of the block layout (numpy, not ggml's C).
    independent = quants.dequantize(stored, GGMLQuantizationType[fmt.upper()])
    assert np.array_equal(independent.view(np.uint32), round_trip(values, fmt).view(np.uint32))
    error = np.abs(round_trip(values, fmt) - values)[0].max() / np.abs(values[0]).max()
    assert error < {"q2_k": 0.5, "q3_k": 0.3, "q4_k": 0.15, "q5_k": 0.08, "q6_k": 0.04}[fmt]


@pytest.mark.parametrize("fmt", ["q8_0", "q5_1", "q5_0", "q4_1", "q4_0"])
def test_ggml_and_gguf_quantize_the_32_element_types_to_the_same_bytes(fmt):
    from gguf import GGMLQuantizationType, quants

    from matlab.formats import ggml

    values = _rows(6, 512)
    assert np.array_equal(ggml.quantize(values, fmt), quants.quantize(values, GGMLQuantizationType[fmt.upper()]))


def test_quantizing_on_threads_gives_the_bytes_of_one_thread():
    from matlab.formats import ggml

    values = _rows(64, 4096)
    assert np.array_equal(ggml.quantize(values, "q4_k", threads=1), ggml.quantize(values, "q4_k", threads=4))


def test_a_row_off_the_super_block_is_refused_naming_it():
    from matlab.errors import FormatError

    with pytest.raises(FormatError, match="not whole q4_k blocks of 256"):
        quantize(_rows(6, 384), "q4_k")


def test_use_more_bits_is_llama_cpps():
    # E4B's 35 layers: llama.cpp gives layers 0-3, 6, 9, ..., 27 and 30-34 more bits.
    assert [layer for layer in range(35) if use_more_bits(layer, 35)] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27,
                                                                          30, 31, 32, 33, 34]


def _gemma(layers: int, hidden: int, ffn: int, ple: int) -> list[PresetTensor]:
    tensors = [PresetTensor("kept", hidden, 3), PresetTensor("kept", hidden, 2),
               PresetTensor("token_embd", ple * layers, 2), PresetTensor("token_embd", hidden, 2)]
    for _ in range(layers):
        tensors += [PresetTensor("attn_k", hidden, 2), PresetTensor("attn_output", 2048, 2),
                    PresetTensor("attn_q", hidden, 2), PresetTensor("attn_v", hidden, 2),
                    PresetTensor("ffn_down", ffn, 2), PresetTensor("ffn_gate", hidden, 2),
                    PresetTensor("ffn_up", hidden, 2), PresetTensor("other", hidden, 2),
                    PresetTensor("kept", hidden, 2), PresetTensor("other", ple, 2), PresetTensor("attn_norm", hidden, 1)]
    return tensors


def test_q4_k_m_on_e4b_promotes_attn_v_and_ffn_down_where_llama_cpp_does():
    tensors = _gemma(35, 2048, 16384, 256)
    types = [chosen for chosen, _ in preset_types("q4_k_m", tensors, 35, 4, "bf16")]
    by_category: dict[str, list[str]] = {}
    for tensor, chosen in zip(tensors, types):
        by_category.setdefault(tensor.category, []).append(chosen)
    more = [use_more_bits(layer, 35) for layer in range(35)]
    assert by_category["attn_v"] == ["q6_k" if bit else "q4_k" for bit in more]
    assert by_category["ffn_down"] == ["q6_k" if bit else "q4_k" for bit in more]
    assert set(by_category["token_embd"]) == {"q6_k"} and set(by_category["kept"]) == {"bf16"}
    assert set(by_category["attn_q"] + by_category["ffn_up"] + by_category["other"]) == {"q4_k"}
    assert set(by_category["attn_norm"]) == {"bf16"}


def test_rows_off_the_super_block_fall_back_as_llama_cpp_does():
    tensors = [PresetTensor("attn_q", 128, 2), PresetTensor("attn_q", 16, 2), PresetTensor("token_embd", 128, 2)]
    assert preset_types("q4_k_m", tensors, 1, 2, "f32") == [("q5_0", True), ("f16", True), ("q8_0", False)]
    assert preset_types("q2_k", tensors[:1], 1, 2, "f32") == [("q4_0", True)]
    assert preset_types("q6_k", tensors[:1], 1, 2, "f32") == [("q8_0", True)]
    assert preset_types("q5_k_m", tensors[:1], 1, 2, "f32") == [("q5_1", True)]
    assert set(PRESETS) >= {"q4_k_m", "q4_k_s", "q5_k_m", "q3_k_m", "q6_k", "q8_0"}


@pytest.mark.parametrize("runtime", ["transformers", "vllm", "mlx-lm"])
def test_a_preset_a_runtime_cannot_load_is_one_line_and_nothing_is_written(runtime_model, tmp_path, runtime):
    from typer.testing import CliRunner

    from matlab.cli import app

    runner = CliRunner()
    path = tmp_path / "k.yaml"
    path.write_text("name: k\nffn_widths: 256\nweight_formats: q4_k_m\n")
    out = tmp_path / "out"
    validate = runner.invoke(app, ["validate", str(path), "--checkpoint", str(runtime_model), "--runtime", runtime])
    sliced = runner.invoke(app, ["slice", str(runtime_model), "--config", str(path), "--out", str(out), "--text-only",
                                 "--runtime", runtime])
    for result in (validate, sliced):
        assert result.exit_code != 0 and "q4_k_m" in result.stderr and runtime in result.stderr, result.output
        assert "Traceback" not in result.output
    assert len([line for line in sliced.stderr.splitlines() if line.strip()]) == 1, sliced.stderr
    assert not out.exists()
    # llama.cpp loads it: the same config validates for it.
    loads = runner.invoke(app, ["validate", str(path), "--checkpoint", str(runtime_model), "--runtime", "llama.cpp"])
    assert loads.exit_code == 0, loads.output
