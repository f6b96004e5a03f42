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


def test_weights_kept_dequantized_give_the_same_logits_stay_in_budget_and_follow_the_candidates(tiny_text,
                                                                                                   sample_ids):
    """A search keeps dequantized weights for the next candidates (`keep_dequantized`): the
    logits are those of dequantizing each time; the kept bytes never pass the budget; a weight
    the last candidate did not read is dropped when the next one starts, so the kept set follows
    the search instead of filling once with the first candidate's weights."""
    loaded = load_model(tiny_text)
    q8 = parse_slice_config({"name": "q8", "ffn_widths": 256, "weight_formats": "q8_0"}, "a.yaml")
    q4 = parse_slice_config({"name": "q4", "ffn_widths": 128, "layers_skipped": [10, 11, 12],
                             "weight_formats": "q4_0"}, "b.yaml")
    with torch.no_grad():
        want = {config.name: select_submodel(loaded, config).model(input_ids=sample_ids).logits for config in (q8, q4)}
    cache = loaded.format_cache
    assert not cache._kept and cache.reuse["hit"] == 0  # nothing kept without a budget
    cache.keep_dequantized(1 << 40)
    with torch.no_grad():
        for config in (q8, q8, q4, q8):
            got = select_submodel(loaded, config).model(input_ids=sample_ids).logits
            assert torch.equal(got, want[config.name]), config.name
    hits = cache.reuse["hit"]
    assert hits > 0 and cache.reuse["miss"] > 0
    # After q8 ran again following q4, q4's narrower FFNs are not kept any more once a new candidate starts.
    select_submodel(loaded, q8)
    assert cache._kept and not any(key[1] == "q4_0" for key in cache._kept), {key[1] for key in cache._kept}
    # A small budget: what is kept never passes it.
    budget = 20_000
    cache.keep_dequantized(0)
    cache.keep_dequantized(budget)
    with torch.no_grad():
        for config in (q8, q4, q8, q4):
            got = select_submodel(loaded, config).model(input_ids=sample_ids).logits
            assert torch.equal(got, want[config.name])
            kept = sum(tensor.numel() * tensor.element_size() for tensor, _ in cache._kept.values())
            assert 0 < kept <= budget and kept == cache._kept_bytes


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


_MEASURE_CACHE_MEMORY = r"""
import json, sys, threading, time
import torch
from matlab.core.loading import load_model
from matlab.core.submodel import format_cache, select_submodel
from matlab.formats import tensor_bytes
from matlab.search.run import releasable
from matlab.slice_config import parse_slice_config

def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096

peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

torch.set_num_threads(2)
loaded = load_model(sys.argv[1], dtype="float32")
ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    select_submodel(loaded, parse_slice_config({"name": "plain", "ffn_widths": 1024}, "p.yaml")).model(input_ids=ids)
model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
formats = ("q8_0", "q6_k", "q4_k")
before = rss()
threading.Thread(target=sample, daemon=True).start()
cache = format_cache(loaded)
cache.prepare(formats, release=releasable(loaded, formats))
config = parse_slice_config({"name": "k", "ffn_widths": 512, "weight_formats": {
    "default": "q8_0", "embeddings": "q6_k", "per_layer_embeddings": "q4_k", "layers": [{"ffn": "q4_k"}] * 35}}, "k.yaml")
with torch.no_grad():
    select_submodel(loaded, config).model(input_ids=ids)
stop.set()
time.sleep(0.01)
packed = sum(tensor_bytes(tuple(cache.parameters[name].shape), fmt) for name, fmt in cache._packed)
largest = max(p.numel() for name, p in cache.parameters.items() if name not in cache.rows_only)
print(json.dumps({"model": model_bytes, "before": before, "peak": peak[0], "cache": cache.nbytes(),
                  "packed": packed, "largest_weight": largest}))
"""


def test_the_cache_holds_packed_bytes_and_memory_grows_by_them_not_by_a_copy_per_format(tmp_path):
    """Measured in a child process on the E4B-shaped model at hidden 256 (185 MB in float32,
    every weight K-quantizable): packing three formats and running a candidate at them adds
    about the packed bytes to the process's peak memory, well under the float32 copy per
    format the cache held before (3x the model)."""
    import json
    import subprocess
    import sys

    from matlab.runtimes.testmodel import write_runtime_test_model

    model = write_runtime_test_model(tmp_path / "wide", seed=3, hidden=256)
    done = subprocess.run([sys.executable, "-c", _MEASURE_CACHE_MEMORY, str(model)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    # The cache holds exactly the packed tensors (and the table rows read): what the files hold.
    assert measured["packed"] <= measured["cache"] <= measured["packed"] * 1.05
    assert measured["packed"] < 0.75 * measured["model"]  # three formats at 8.5, 6.6 and 4.5 bits
    grown = measured["peak"] - measured["before"]
    # Packed formats, one candidate's largest weights dequantized at a time, allocator slack.
    assert grown <= measured["packed"] + 16 * 4 * measured["largest_weight"] + 64 * 2**20, measured
    assert grown < 0.5 * 3 * measured["model"], measured
