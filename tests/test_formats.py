"""GGUF weight formats: exact cost against the bytes gguf writes, narrower FFNs as views of the
once-quantized tensor, `weight_formats` in slice configs, and every bad input refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf import quants as gguf_quants
from safetensors import safe_open
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_arch, facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint, inventory_from_facts
from matlab.cli import app
from matlab.errors import FormatError, SliceConfigError
from matlab.formats import (
    FORMATS,
    block_shape,
    check_format,
    dequantize,
    quantize,
    round_trip,
    tensor_bytes,
)
from matlab.formats.cache import QuantizedWeight
from matlab.formats.types import K_QUANTS
from matlab.io.reader import CheckpointFiles
from matlab.plan import SlicePlan
from matlab.plan.accounting import count_parameters
from matlab.plan.tensor_formats import tensor_format, tensor_formats
from matlab.slice_config import dump_slice_config, load_slice_config, parse_slice_config
from matlab.slice_config.validation import check_slice_config

runner = CliRunner()
RNG = np.random.default_rng(0)
# The formats the `gguf` package quantizes too (32-element blocks and floats): the K-quants'
# 256-element super-blocks are tested in test_kquants.py.
BLOCK32 = tuple(fmt for fmt in FORMATS if fmt not in K_QUANTS)
E2B = {"name": "e2b", "layers_skipped": [20, 21, 22, 23, 24], "ffn_widths": 8192}


@pytest.fixture(scope="module")
def e4b():
    return facts_from_arch("gemma-3n-e4b")


def _written(tmp_path, tensors: dict[str, tuple[np.ndarray, str]]) -> dict[str, int]:
    """Write `tensors` (name -> (stored data, format)) with gguf's own writer; the bytes of
    each tensor's data as the file's reader reports them."""
    path = tmp_path / "written.gguf"
    writer = GGUFWriter(path, "gemma3n")
    for name, (stored, fmt) in tensors.items():
        writer.add_tensor(name, stored, raw_dtype=GGMLQuantizationType[fmt.upper()])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {tensor.name: int(tensor.n_bytes) for tensor in GGUFReader(path).tensors}


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


# -- formats ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", BLOCK32)
def test_cost_is_the_bytes_gguf_writes(tmp_path, fmt):
    shapes = [(3, 64), (17, 256), (2, 4, 96), (128,)]
    tensors = {f"t{index}": (quantize(RNG.standard_normal(shape).astype(np.float32), fmt), fmt)
               for index, shape in enumerate(shapes)}
    written = _written(tmp_path, tensors)
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[fmt.upper()]]
    assert block_shape(fmt) == (block, block_bytes)
    for index, shape in enumerate(shapes):
        rows = int(np.prod(shape[:-1]))
        assert tensor_bytes(shape, fmt) == written[f"t{index}"] == rows * shape[-1] // block * block_bytes


@pytest.mark.parametrize("fmt", [f for f in BLOCK32 if block_shape(f)[0] > 1])
def test_rows_off_the_block_are_refused(fmt):
    with pytest.raises(FormatError, match=f"a row of 48 elements is not whole {fmt} blocks of 32"):
        tensor_bytes((4, 48), fmt)
    with pytest.raises(FormatError, match="not whole"):
        quantize(np.zeros((4, 48), dtype=np.float32), fmt)


@pytest.mark.parametrize("fmt", BLOCK32)
def test_round_trip_is_the_reference_quantizer(fmt):
    weights = RNG.standard_normal((8, 64)).astype(np.float32)
    qtype = GGMLQuantizationType[fmt.upper()]
    expected = gguf_quants.dequantize(gguf_quants.quantize(weights, qtype), qtype)
    assert np.array_equal(_bits(round_trip(weights, fmt)), _bits(expected))
    stored = quantize(weights, fmt)
    assert not np.shares_memory(dequantize(stored, fmt), stored)


@pytest.mark.parametrize("fmt", BLOCK32)
@pytest.mark.parametrize("cut_axis", [0, 1])
def test_narrower_ffn_is_a_view_bit_identical_to_quantizing_it(fmt, cut_axis):
    weights = RNG.standard_normal((128, 192) if cut_axis == 0 else (96, 256)).astype(np.float32)
    quantized = QuantizedWeight.of(weights, fmt, cut_axis)
    for width in (32, 64, 96, 128):
        narrow = weights[:width] if cut_axis == 0 else weights[:, :width]
        view = quantized.narrowed(width)
        assert np.shares_memory(view, quantized.stored) and view.base is not None
        assert np.array_equal(view, quantize(narrow, fmt))
        assert np.array_equal(_bits(quantized.dequantized(width)), _bits(round_trip(narrow, fmt)))
        assert quantized.nbytes(width) == tensor_bytes(narrow.shape, fmt)
    if cut_axis == 0:  # rows are neurons: any width is whole rows
        assert np.array_equal(_bits(quantized.dequantized(33)), _bits(round_trip(weights[:33], fmt)))


def test_quantized_weight_owns_its_data():
    weights = RNG.standard_normal((4, 32)).astype(np.float32)
    quantized = QuantizedWeight.of(weights, "f32", 0)
    weights[:] = 0
    assert quantized.dequantized().any() and not quantized.stored.flags.writeable


@pytest.mark.parametrize("fmt", [f for f in BLOCK32 if block_shape(f)[0] > 1])
def test_down_projection_width_off_the_block_is_refused(fmt):
    quantized = QuantizedWeight.of(RNG.standard_normal((8, 64)).astype(np.float32), fmt, 1)
    with pytest.raises(FormatError, match=f"width 40 is not a multiple of {fmt}'s block of 32 elements"):
        quantized.narrowed(40)
    with pytest.raises(FormatError, match="outside 1..64"):
        quantized.narrowed(65)


@pytest.mark.parametrize("name, expected", [
    ("Q8_0", "q8_0"), (" bf16 ", "bf16"), ("Q6_K", "q6_k"),
])
def test_format_names_any_case(name, expected):
    assert check_format(name) == expected


@pytest.mark.parametrize("name, reason", [
    ("q4_k_m", "'q4_k_m' is a llama.cpp file type (a type per tensor), not one tensor's format"),
    ("iq4_xs", "needs an importance matrix or has no reference quantizer"),
    ("tq1_0", "is a ternary type"), ("mxfp4", "only for checkpoints that arrive in MXFP4"),
    ("int4", "'int4' is not a GGUF weight format; use one of f32, f16, bf16, q8_0, q6_k, q5_1, q5_k, q5_0, q4_1, "
             "q4_k, q4_0, q3_k, q2_k"),
    (8, "8 is not a format name"),
])
def test_unoffered_formats_say_why(name, reason):
    with pytest.raises(FormatError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_format(name)


# -- weight_formats in slice configs ---------------------------------------------------------


def test_configs_without_formats_count_as_before(e4b):
    config = parse_slice_config(E2B, "e2b.yaml")
    report = count_parameters(inventory_from_facts(e4b), e4b, SlicePlan.build(config, e4b))
    assert config.weight_formats is None and "weight_formats" not in dump_slice_config(config)
    assert report.format_bytes is None and report.formats is None and report.format_fallbacks == ()


def test_yaml_forms_and_dump_round_trip(tmp_path, e4b):
    text = ("name: mixed\nlayers_skipped: [20, 21, 22, 23, 24]\nffn_widths: 8192\nweight_formats:\n"
            "  default: Q8_0\n  per_layer_embeddings: q4_0\n  layers:\n    - {ffn: q4_0, count: 10}\n"
            "    - {attention: bf16, ffn: q5_0, count: 19}\n    - q4_1\n")
    (tmp_path / "mixed.yaml").write_text(text)
    config = load_slice_config(tmp_path / "mixed.yaml")
    formats = config.weight_formats.for_layers(SlicePlan.build(config, e4b).kept_layers)
    assert (formats[0].attention, formats[0].ffn) == ("q8_0", "q4_0")
    assert (formats[10].attention, formats[10].ffn, formats[29].attention) == ("bf16", "q5_0", "q4_1")
    assert config.weight_formats.embeddings_format == "q8_0"
    (tmp_path / "again.yaml").write_text(dump_slice_config(config))
    assert load_slice_config(tmp_path / "again.yaml") == config
    # The mapping form, and the provenance's JSON dump of it (indexes as strings), read back.
    mapping = parse_slice_config({**E2B, "weight_formats": {"default": "q8_0", "layers": {3: {"ffn": "q4_0"}}}}, "m")
    assert parse_slice_config(json.loads(json.dumps(mapping.model_dump(mode="json"))), "m") == mapping
    layer_3 = mapping.weight_formats.for_layers([2, 3])
    assert (layer_3[0].ffn, layer_3[1].attention, layer_3[1].ffn) == ("q8_0", "q8_0", "q4_0")
    assert parse_slice_config({**E2B, "weight_formats": "q4_0"}, "s").weight_formats.default == "q4_0"


@pytest.mark.parametrize("formats, expected", [
    ({"default": "q4_k_m"}, "f.yaml: weight_formats.default: 'q4_k_m' is a llama.cpp file type"),
    ({"preset": "q4_k_m", "default": "q8_0"}, "preset q4_k_m sets every tensor's type, and default would too"),
    ({"preset": "q4_k_z"}, "weight_formats.preset: 'q4_k_z' is not a llama.cpp file type"),
    ({"default": "q8_0", "embeddings": "q9"}, "f.yaml: weight_formats.embeddings: 'q9' is not a GGUF weight format"),
    ({"default": "q8_0", "layers": [{"ffn": "q4_0"}, {"ffn": "int4"}, 7]},
     "f.yaml: weight_formats.layers: entry 1 ffn: 'int4' is not a GGUF weight format"),
    ({"default": "q8_0", "layers": [{"ffn": "q4_0", "count": 0}]}, "entry 0 count is 0; a run covers at least one"),
    ({"default": "q8_0", "layers": {3: {"ffn": "q4_0", "count": 2}}},
     "weight_formats.layers: layer 3 has a count, but an entry of the layer-index mapping is one layer"),
    ({"default": "q8_0", "layers": {-1: "q4_0"}}, "weight_formats.layers: layer -1 is negative"),
    ({"default": "q8_0", "layers": [{"ffn": "q4_0", "count": 10**9}]},
     "weight_formats.layers: entry 0 (a run of 1000000000) brings the entries to 1,000,000,000 kept layers"),
    ({"default": "q8_0", "layer": []}, "weight_formats.layer: Extra inputs are not permitted"),
    ({"ffn": "q8_0"}, "weight_formats.ffn: Extra inputs are not permitted"),
    ({"embeddings": "q8_0"}, "give `default` (a format for every tensor not named otherwise) or `preset`"),
])
def test_bad_format_fields_are_one_line(formats, expected):
    with pytest.raises(SliceConfigError) as caught:
        parse_slice_config({**E2B, "weight_formats": formats}, "f.yaml")
    message = str(caught.value)
    assert expected in message and "\n" not in message, message


@pytest.mark.parametrize("config, expected", [
    ({**E2B, "weight_formats": {"default": "q8_0", "layers": {20: "q4_0"}}},
     "c.yaml: weight_formats.layers (layer 20): layer 20 is skipped (layers_skipped), so it stores no weights; "
     "remove its entry or keep the layer"),
    ({**E2B, "weight_formats": {"default": "q8_0", "layers": {35: "q4_0"}}},
     "c.yaml: weight_formats.layers (layer 35): out of range; gemma-3n-e4b has layers 0..34"),
    ({**E2B, "weight_formats": {"default": "q8_0", "layers": [{"ffn": "q4_0", "count": 35}]}},
     "c.yaml: weight_formats.layers: 35 entries for 30 kept layers; give one entry per kept layer"),
    ({**E2B, "ffn_widths": [8192] * 3 + [8200] + [8192] * 26,
      "weight_formats": {"default": "bf16", "layers": [*["bf16"] * 3, {"ffn": "q4_0"}, *["bf16"] * 26]}},
     "c.yaml: weight_formats.layers[3] (layer 3): FFN width 8200 (ffn_widths[3]) is not a multiple of q4_0's block of "
     "32: the down projection's rows are the FFN width and are stored as whole blocks; use a multiple of 32 or a "
     "float FFN format (f32, f16, bf16)"),
    ({**E2B, "ffn_widths": 8200, "weight_formats": "q8_0"},
     "c.yaml: weight_formats (layers 0, 1, 2, 3, 4 and 25 more): 30 kept layers, first layer 0 "
     "(weight_formats.default): FFN width 8200"),
])
def test_formats_checked_against_the_kept_layers(e4b, config, expected):
    errors = [str(p) for p in check_slice_config(parse_slice_config(config, "c.yaml"), e4b, "c.yaml")
              if p.severity == "error"]
    assert errors == [expected] or (len(errors) == 1 and errors[0].startswith(expected)), errors


def test_off_block_width_is_fine_in_a_float_format(e4b):
    config = parse_slice_config({**E2B, "ffn_widths": 8200, "weight_formats": {"default": "q8_0", "layers": [
        {"ffn": "bf16", "count": 30}]}}, "c.yaml")
    assert [p for p in check_slice_config(config, e4b, "c.yaml") if p.severity == "error"] == []


# -- per-tensor formats and their cost ------------------------------------------------------


def test_e4b_tensors_never_fall_back_and_ple_is_padded(e4b):
    inventory = inventory_from_facts(e4b)
    for fmt in BLOCK32:
        plan = SlicePlan.build(parse_slice_config({**E2B, "weight_formats": fmt}, "c.yaml"), e4b)
        resolved = tensor_formats(plan, inventory)
        assert resolved and not [tensor.name for tensor in resolved if tensor.fell_back], fmt
        assert {tensor.format for tensor in resolved} == {fmt, "f32"}
    ple = e4b.text_prefix + e4b.family.ple_table
    padded = tensor_format(plan, ple, inventory[ple].shape)
    assert padded.shape == (262400, 30 * 256)  # the converter pads 262144 rows to vocab_size
    coefs = e4b.text_prefix + "layers.0.altup.correction_coefs.weight"
    assert tensor_format(plan, coefs, inventory[coefs].shape).format == "f32"
    assert tensor_format(plan, "model.vision_tower.timm_model.conv_stem.conv.weight", (64, 3, 3, 3)) is None


def test_groups_take_their_formats(e4b):
    config = parse_slice_config({**E2B, "weight_formats": {
        "default": "q5_1", "embeddings": "q8_0", "per_layer_embeddings": "q4_0",
        "layers": {0: {"attention": "bf16", "ffn": "q4_1"}}}}, "c.yaml")
    plan = SlicePlan.build(config, e4b)
    inventory, prefix = inventory_from_facts(e4b), e4b.text_prefix
    expected = {"embed_tokens.weight": "q8_0", "embed_tokens_per_layer.weight": "q4_0",
                "per_layer_model_projection.weight": "q5_1", "altup_projections.0.weight": "q5_1",
                "layers.0.self_attn.q_proj.weight": "bf16", "layers.0.mlp.down_proj.weight": "q4_1",
                "layers.0.laurel.linear_left.weight": "q5_1", "layers.0.input_layernorm.weight": "f32",
                "layers.1.self_attn.k_proj.weight": "q5_1", "layers.34.mlp.up_proj.weight": "q5_1"}
    for relative, fmt in expected.items():
        name = prefix + relative
        assert tensor_format(plan, name, inventory[name].shape).format == fmt, relative
    assert tensor_format(plan, prefix + "layers.20.mlp.up_proj.weight", (16384, 2048)) is None  # skipped


def _sliced_tensors(checkpoint, plan: SlicePlan):
    """The slice's text tensors as float32 arrays, cut as the slicer cuts them."""
    files = CheckpointFiles(checkpoint)
    for name, info in files.tensors.items():
        spec = plan.tensor_spec(name, info.shape, text_only=True)
        if spec is None:
            continue
        with safe_open(info.file, framework="pt") as handle:
            tensor = handle.get_tensor(name).float().numpy()
        if spec.rows is not None:
            tensor = np.concatenate([tensor[start:stop] for start, stop in spec.rows], axis=0)
        if spec.cols is not None:
            tensor = np.concatenate([tensor[:, start:stop] for start, stop in spec.cols], axis=1)
        yield name, tensor


def test_tiny_slice_cost_is_the_file_gguf_writes(tiny_text, tmp_path):
    """Every text tensor of a tiny slice quantized at its resolved format and written by gguf:
    the accounting's figure is the sum of the tensor data the file holds, fallbacks included."""
    facts = facts_from_checkpoint(tiny_text)
    kept = facts.num_layers - 2
    config = parse_slice_config({"name": "tiny-q", "layers_skipped": [1, 2], "ffn_widths": [128] * kept, "weight_formats": {
        "default": "q8_0", "embeddings": "q4_0", "layers": [{"ffn": "q4_0", "count": kept - 1}, "q5_0"]}}, "t.yaml")
    plan = SlicePlan.build(config, facts, "t.yaml")
    inventory = inventory_from_checkpoint(tiny_text)
    layers = config.weight_formats.for_layers(plan.kept_layers)
    tensors = {}
    for name, values in _sliced_tensors(tiny_text, plan):
        resolved = tensor_format(plan, name, inventory[name].shape, layers)
        if resolved.shape != values.shape:  # the vocabulary-sized tables: zero rows appended
            values = np.concatenate([values, np.zeros((resolved.shape[0] - values.shape[0], *values.shape[1:]),
                                                      dtype=np.float32)])
        tensors[name] = (quantize(values, resolved.format), resolved.format)
    written = _written(tmp_path, tensors)
    report = count_parameters(inventory, facts, plan, text_only=True)
    assert report.format_bytes == sum(written.values())
    assert report.formats == "f16/f32/q4_0/q5_0/q8_0"
    # Hidden 64, PLE block 8, LAuReL rank 4: rows that are not whole blocks fall back to f16.
    fallbacks = " ".join(report.format_fallbacks)
    assert "laurel.linear_right.weight" in fallbacks and "rows of 4 are not whole q8_0 blocks; stored as f16" in fallbacks
    assert "embed_tokens_per_layer.weight: rows of 104 are not whole q8_0 blocks" in fallbacks


# -- the CLI -------------------------------------------------------------------------------


def test_params_prints_gguf_bytes(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("name: q\nlayers_skipped: [20, 21, 22, 23, 24]\nffn_widths: 8192\nweight_formats: q8_0\n")
    as_json = runner.invoke(app, ["params", "--arch", "gemma-3n-e4b", "--config", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    payload = json.loads(as_json.stdout)
    assert payload["formats"] == "f32/q8_0" and payload["format_fallbacks"] == []
    assert payload["text_bytes"] // 2 < payload["format_bytes"] < payload["text_bytes"]
    table = runner.invoke(app, ["params", "--arch", "gemma-3n-e4b", "--config", str(path)], env={"COLUMNS": "200"})
    assert "GGUF text tensor bytes (f32/q8_0)" in table.stdout and f"{payload['format_bytes']:,}" in table.stdout


def test_params_warns_of_fallbacks(tiny_text, tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("name: q\nffn_widths: 128\nweight_formats: q8_0\n")
    result = runner.invoke(app, ["params", "--checkpoint", str(tiny_text), "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"warning: {path}: weight_formats: " in result.stderr and "stored as f16" in result.stderr


def test_validate_and_slice_refuse_a_format_for_a_skipped_layer(tiny_text, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nlayers_skipped: [2]\nffn_widths: 128\nweight_formats:\n  default: q8_0\n"
                    "  layers: {2: q4_0}\n")
    expected = f"{path}: weight_formats.layers (layer 2): layer 2 is skipped (layers_skipped)"
    validate = runner.invoke(app, ["validate", str(path), "--checkpoint", str(tiny_text)])
    assert validate.exit_code == 1 and expected in validate.stderr
    out = tmp_path / "out"
    sliced = runner.invoke(app, ["slice", str(tiny_text), "--config", str(path), "--out", str(out)])
    assert sliced.exit_code == 1 and expected in sliced.stderr and "Traceback" not in sliced.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_slice_records_the_formats(tiny_text, tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("name: q\nffn_widths: 128\nweight_formats: {default: q8_0, per_layer_embeddings: bf16}\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["slice", str(tiny_text), "--config", str(path), "--out", str(out), "--text-only"])
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "matformer_provenance.json").read_text())
    assert provenance["slice_config"]["weight_formats"]["per_layer_embeddings"] == "bf16"
    assert provenance["params"]["format_bytes"] > 0
    card = (out / "README.md").read_text()
    assert "GGUF weight formats" in card and "GGUF text tensor bytes" in card
