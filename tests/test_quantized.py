"""Submodels at their weight formats (`matlab.formats.cache`), against an independent oracle:
transformers' own model of the slice whose every weight went through the `gguf` package's
reference quantizer and back, by the format rules written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.slice_config import parse_slice_config

from oracle import oracle_model


def _gguf_round_trip(values: torch.Tensor, fmt: str) -> torch.Tensor:
    qtype = GGMLQuantizationType[fmt.upper()]
    stored = quants.quantize(values.detach().float().numpy(), qtype)
    return torch.from_numpy(np.array(quants.dequantize(stored, qtype), dtype=np.float32))


def _expected_format(name: str, shape: tuple[int, ...], layer_formats: list[dict], formats: dict) -> str:
    """llama.cpp's converter's choice for a tensor of the sliced model, written out independently."""
    if len(shape) < 2 or name.endswith(("altup.correction_coefs.weight", "altup.prediction_coefs.weight")):
        return "f32"
    parts = name.split(".")
    if parts[:2] == ["model", "layers"] and ".mlp." in name:
        wanted = layer_formats[int(parts[2])].get("ffn", formats["default"])
    elif parts[:2] == ["model", "layers"] and ".self_attn." in name and name.endswith("_proj.weight"):
        wanted = layer_formats[int(parts[2])].get("attention", formats["default"])
    elif name == "model.embed_tokens.weight":
        wanted = formats.get("embeddings", formats["default"])
    elif name == "model.embed_tokens_per_layer.weight":
        wanted = formats.get("per_layer_embeddings", formats["default"])
    else:
        wanted = formats["default"]
    return wanted if shape[-1] % GGML_QUANT_SIZES[GGMLQuantizationType[wanted.upper()]][0] == 0 else "f16"


# Tiny model: hidden 64, PLE block 8 (15 layers: rows of 120, not whole 32-blocks; 12 kept: 96,
# three blocks that split layers' blocks), LAuReL rank 4 (rows of 4 fall back to f16).
CASES = {
    "uniform-q8": ([], [256] * 15, {"default": "q8_0"}, [{}] * 15),
    "mixed": ([10, 11, 12], [128, 256] * 6,
              {"default": "q8_0", "embeddings": "q4_0", "per_layer_embeddings": "q5_0"},
              [{"ffn": "q4_0"}, {"attention": "q4_1", "ffn": "q5_1"}] * 6),
    "float-and-block": ([3], [128] * 14, {"default": "bf16"}, [{"ffn": "q4_0"}, {"attention": "f16"}] * 7),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_submodel_at_its_formats_equals_transformers_on_round_tripped_weights(tiny_text, sample_ids, case):
    skipped, widths, formats, layers = CASES[case]
    config = parse_slice_config({"name": case, "layers_skipped": skipped, "ffn_widths": widths,
                                 "weight_formats": {**formats, "layers": layers}}, f"{case}.yaml")
    loaded = load_model(tiny_text)
    submodel = select_submodel(loaded, config)
    expected = oracle_model(tiny_text, skipped, widths)
    with torch.no_grad():
        for name, parameter in expected.named_parameters():
            fmt = _expected_format(name, tuple(parameter.shape), layers, formats)
            if fmt != "f32":
                parameter.copy_(_gguf_round_trip(parameter, fmt))
        want = expected(input_ids=sample_ids).logits
        got = submodel.model(input_ids=sample_ids).logits
        plain = select_submodel(loaded, config.model_copy(update={"weight_formats": None})).model(
            input_ids=sample_ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    assert (got - plain).abs().max() > 1e-3  # the formats changed the model: the comparison is not vacuous
    assert submodel.weight_formats is not None and "f16" in submodel.weight_formats.split("/")


def test_weights_are_packed_once_read_as_modules_run_and_narrower_ffns_come_from_the_packed_rows(tiny_text,
                                                                                                  sample_ids):
    """The cache holds what the file holds (packed blocks, each weight once per format); a
    submodel's weights exist only while their module runs; a narrower FFN is read from the wide
    tensor's packed rows and equals quantizing the narrower tensor itself; the per-layer table
    is packed only for the token rows read."""
    from matlab.formats import tensor_bytes
    from matlab.plan import TensorSpec

    loaded = load_model(tiny_text)
    wide = parse_slice_config({"name": "wide", "ffn_widths": 256, "weight_formats": "q4_0"}, "w.yaml")
    narrow = parse_slice_config({"name": "narrow", "ffn_widths": 128, "layers_skipped": [10, 11, 12],
                                 "weight_formats": "q4_0"}, "n.yaml")
    with torch.no_grad():
        select_submodel(loaded, wide).model(input_ids=sample_ids)
    cache = loaded.format_cache
    packed = dict(cache._packed)
    submodel = select_submodel(loaded, narrow)
    down = submodel.model.model.layers[0].mlp.down_proj
    assert down.weight.stride() == (0, 0) and down.weight.shape == (64, 128)  # made when the module runs
    with torch.no_grad():
        submodel.model(input_ids=sample_ids)
    assert down.weight.stride() == (0, 0)  # and dropped after
    assert packed.keys() == cache._packed.keys() and all(cache._packed[key] is array for key, array in packed.items())
    name = "model.layers.0.mlp.down_proj.weight"
    narrower = TensorSpec(name, name, (64, 256), cols=((0, 128),))
    assert torch.equal(cache.weight(name, narrower, "q4_0"),
                       _gguf_round_trip(loaded.model.get_parameter(name)[:, :128], "q4_0"))
    for (tensor, fmt), array in cache._packed.items():
        assert array.nbytes == tensor_bytes(tuple(cache.parameters[tensor].shape), fmt), tensor
    # The per-layer table: only the rows of the tokens read, never the whole table.
    table = "model.embed_tokens_per_layer.weight"
    assert not any(key[0] == table for key in cache._packed)
    rows = [ids for (tensor, _), (ids, _) in cache._rows.items() if tensor == table]
    read = set(sample_ids.unique().tolist()) | {0}  # ids past the per-layer vocabulary read row 0
    assert rows and all(set(ids.tolist()) <= read for ids in rows)
    assert all(len(ids) < cache.parameters[table].shape[0] for ids in rows)


def test_large_tables_go_through_in_row_chunks_with_the_same_result(tiny_text, monkeypatch):
    import matlab.formats.cache as quantized
    from matlab.formats.cache import FormatCache

    loaded = load_model(tiny_text)
    name = "model.embed_tokens_per_layer.weight"  # 384 x 120: rows of 120, f16 and bf16 take any row
    whole = FormatCache(loaded.model).whole(name, "f16")
    monkeypatch.setattr(quantized, "CHUNK_ELEMENTS", 1000)  # 8 rows at a time
    chunked = FormatCache(loaded.model).whole(name, "f16")
    assert torch.equal(whole, chunked) and not torch.equal(whole, loaded.model.get_parameter(name))
    down = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(FormatCache(loaded.model).whole(down, "q4_0"),
                       _gguf_round_trip(loaded.model.get_parameter(down), "q4_0"))


def test_prepare_reports_progress_over_every_element_it_quantizes(tiny_text):
    """The one-time quantization is minutes on a full-size model: it runs on threads, with the
    same results, and shows progress to the end."""
    from matlab.formats.cache import FormatCache
    from matlab.progress import Progress

    class Recorded(Progress):
        def __init__(self):
            self.total, self.done, self.descriptions = None, 0.0, []

        def start(self, total, *, completed=0, description=""):
            self.total, self.descriptions = total, [description]

        def advance(self, amount=1):
            self.done += amount

        def describe(self, description):
            self.descriptions.append(description)

    model = load_model(tiny_text).model
    cache = FormatCache(model)
    recorded = Recorded()
    seconds = cache.prepare(("q8_0", "q4_0"), recorded, threads=3)
    one_by_one = FormatCache(model)  # weights prepared on threads equal those quantized one at a time
    for (name, fmt), packed in cache._packed.items():
        assert np.array_equal(packed, one_by_one.packed(name, fmt)), (name, fmt)
    assert set(seconds) == {"q8_0", "q4_0"}
    expected = sum(cache.parameters[name].numel() for name, fmt in cache._packed) / 1e6
    assert recorded.total == pytest.approx(expected) and recorded.done == pytest.approx(expected) and expected > 0
    assert "quantizing the weights to q8_0, q4_0 (M elements)" in recorded.descriptions


def test_an_interrupted_prepare_stops_without_quantizing_the_rest_and_can_start_again(tiny_text):
    """Ctrl-C during the one-time quantization stops it (queued weights dropped), leaves only
    whole round trips behind, and a later prepare finishes the job."""
    from matlab.formats.cache import FormatCache
    from matlab.progress import Progress

    class Interrupting(Progress):
        def advance(self, amount=1):
            raise KeyboardInterrupt

    model = load_model(tiny_text).model
    cache = FormatCache(model)
    with pytest.raises(KeyboardInterrupt):
        cache.prepare(("q8_0", "q4_0"), Interrupting(), threads=1)
    prepared = len(cache._packed)
    cache.prepare(("q8_0", "q4_0"), threads=1)
    assert 0 < prepared < len(cache._packed)
    one_by_one = FormatCache(model)
    for (name, fmt), packed in cache._packed.items():
        assert np.array_equal(packed, one_by_one.packed(name, fmt)), (name, fmt)
