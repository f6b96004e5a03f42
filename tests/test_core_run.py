"""Running models through the core: scoring, generation, perplexity, latency, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from matlab.cli import app
from matlab.core.generation import generate_ids
from matlab.core.latency import measure_latency
from matlab.core.loading import load_model
from matlab.core.scoring import perplexity, score_continuations
from matlab.core.submodel import select_submodel
from matlab.slice_config import SliceConfig
from matlab.slicing.slicer import slice_checkpoint

runner = CliRunner()
E2B_LIKE = SliceConfig(name="nested", layers_skipped=[10, 11, 12], ffn_widths=128)


@pytest.fixture(scope="module")
def loaded(tiny_multimodal):
    return load_model(tiny_multimodal)


@pytest.fixture(scope="module", params=["full", "elastic"])
def submodel(request, loaded):
    return select_submodel(loaded, None if request.param == "full" else E2B_LIKE)


def _direct_logprobs(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def test_batched_scores_equal_unbatched_and_direct(submodel):
    generator = torch.Generator().manual_seed(0)
    requests = []
    for context_length, continuation_length in [(5, 3), (17, 1), (2, 9), (11, 4), (1, 1)]:
        ids = torch.randint(4, 512, (context_length + continuation_length,), generator=generator).tolist()
        requests.append((ids[:context_length], ids[context_length:]))
    batched = score_continuations(submodel.model, requests, batch_size=5)
    for request, score in zip(requests, batched):
        alone = score_continuations(submodel.model, [request], batch_size=1)[0]
        assert score.token_logprobs == pytest.approx(alone.token_logprobs, rel=1e-5, abs=1e-5)
        direct = _direct_logprobs(submodel.model, request[0] + request[1])[-len(request[1]):]
        assert score.token_logprobs == pytest.approx(direct, rel=1e-5, abs=1e-5)


def test_requests_sharing_inputs_share_a_row_and_score_like_alone(submodel):
    """Multiple-choice requests (one context, one-token choices) and a request whose inputs
    equal another's but split differently are computed once and scored exactly as alone."""
    context = [2, 40, 41, 42, 43]
    requests = [(context, [choice]) for choice in (50, 60, 70, 80)]
    requests += [(context[:3], [context[3], context[4], 90]), ([2, 7], [8])]
    calls = []
    handle = submodel.model.register_forward_hook(lambda module, args, kwargs_output: calls.append(1))
    try:
        shared = score_continuations(submodel.model, requests, batch_size=1)
    finally:
        handle.remove()
    assert len(calls) == 2  # two distinct inputs: the shared context (with its split twin), and [2, 7]
    for request, score in zip(requests, shared):
        direct = _direct_logprobs(submodel.model, request[0] + request[1])[-len(request[1]):]
        assert score.token_logprobs == pytest.approx(direct, rel=1e-5, abs=1e-5)


def test_truncation_keeps_the_continuation(submodel):
    ids = list(range(4, 40))
    score = score_continuations(submodel.model, [(ids[:-3], ids[-3:])], max_length=10)[0]
    direct = _direct_logprobs(submodel.model, ids[-11:])[-3:]
    assert score.token_logprobs == pytest.approx(direct, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="context and continuation must both be non-empty"):
        score_continuations(submodel.model, [([], [5])])


def test_generation_with_and_without_cache_agree(submodel):
    prompt = [2, 40, 41, 42, 43, 44]
    cached = generate_ids(submodel.model, prompt, max_new_tokens=12, use_cache=True, eos_token_id=-1)
    uncached = generate_ids(submodel.model, prompt, max_new_tokens=12, use_cache=False, eos_token_id=-1)
    assert cached == uncached and len(cached) == 12
    sampled = [generate_ids(submodel.model, prompt, 12, temperature=1.0, seed=s, eos_token_id=-1) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded sampling is reproducible
    assert sampled[0] != sampled[2]  # and actually samples (12 tokens over a 512-token vocabulary)


def test_greedy_generation_follows_argmax(submodel):
    prompt = [2, 50, 60, 70]
    new = generate_ids(submodel.model, prompt, max_new_tokens=5, eos_token_id=-1)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(submodel.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert new == ids[len(prompt):]


def test_perplexity_matches_direct_and_windows(submodel):
    ids = torch.randint(4, 512, (60,), generator=torch.Generator().manual_seed(4)).tolist()
    direct = math.exp(-sum(_direct_logprobs(submodel.model, ids)) / (len(ids) - 1))
    assert perplexity(submodel.model, ids, window=128) == pytest.approx(direct, rel=1e-5)
    windowed = perplexity(submodel.model, ids, window=16, stride=8)
    assert windowed != pytest.approx(direct, rel=1e-9) and 0.5 * direct < windowed < 2 * direct


def test_deployed_bytes_match_the_sliced_checkpoint(loaded, tiny_multimodal, tmp_path):
    from transformers import Gemma3nForCausalLM

    submodel = select_submodel(loaded, E2B_LIKE)
    slice_checkpoint(tiny_multimodal, E2B_LIKE, tmp_path / "out", text_only=True)
    deployed = Gemma3nForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert submodel.weight_bytes == sum(p.numel() * p.element_size() for p in deployed.parameters())
    assert submodel.ple_bytes == deployed.model.embed_tokens_per_layer.weight.numel() * 4
    assert select_submodel(loaded, None).weight_bytes > submodel.weight_bytes


def test_latency_is_measured(submodel):
    latency = measure_latency(submodel.model, prompt_tokens=16, decode_tokens=4, runs=3)
    assert latency.prefill_tokens_per_s > 0 and latency.decode_tokens_per_s > 0
    assert latency.device == "cpu" and latency.dtype == "float32" and latency.rounds == 3
    assert latency.prefill_tokens_per_s_min <= latency.prefill_tokens_per_s <= latency.prefill_tokens_per_s_max


def test_cli_score_json(tiny_multimodal, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: nested\nlayers_skipped: [10, 11, 12]\nffn_widths: 128\n")
    result = runner.invoke(app, ["score", str(tiny_multimodal), "--text", "hi there", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["tokens"][:2] == ["h", "i"] and len(payload["logprobs"]) == len("hi there")
    assert payload["total_logprob"] == pytest.approx(sum(payload["logprobs"]))
    full = json.loads(runner.invoke(app, ["score", str(tiny_multimodal), "--text", "hi there", "--json"]).stdout)
    assert full["total_logprob"] != pytest.approx(payload["total_logprob"])


def test_cli_generate_and_perplexity(tiny_text, tmp_path):
    result = runner.invoke(app, ["generate", str(tiny_text), "--prompt", "hello", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    text = tmp_path / "t.txt"
    text.write_text("a small text to measure")
    result = runner.invoke(app, ["perplexity", str(tiny_text), "--file", str(text), "--window", "8"])
    assert result.exit_code == 0 and "perplexity" in result.stdout and "over 23 tokens" in result.stdout


def test_cli_errors_are_one_line(tiny_text, tmp_path):
    empty = runner.invoke(app, ["score", str(tiny_text), "--text", ""])
    assert empty.exit_code == 2 and "the text is empty" in empty.stderr and "Traceback" not in empty.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlayers_skipped: [9]\nffn_widths: 128\n")
    result = runner.invoke(app, ["score", str(tiny_text), "--text", "hi", "--config", str(bad)])
    assert result.exit_code == 1 and "layer 9 is the KV producer" in result.stderr
    offline = runner.invoke(app, ["generate", "google/gemma-3n-E4B", "--prompt", "hi"])
    assert offline.exit_code == 1 and "pass its local directory" in offline.stderr
