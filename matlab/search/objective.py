"""The search objective: how far a submodel is from the full model on calibration text.

`kl`: the mean KL divergence, per token, of the submodel's next-token distribution from the
full model's. The full model's distributions are computed once and kept reduced to its top-k
tokens plus one bucket for the rest of the vocabulary (E4B's full distribution is 1 MB per
token in fp32); the KL is taken between the two distributions coarsened to those k + 1
outcomes. By the log-sum inequality this never exceeds the exact KL, and equals it when k is
the vocabulary size. `perplexity`: the submodel's perplexity of the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from matlab.errors import InputError

OBJECTIVES = ("kl", "perplexity")


@dataclass(frozen=True)
class Calibration:
    """Token windows, each starting with BOS, batched as [batch, window] tensors."""

    batches: tuple[torch.Tensor, ...]
    source: str

    @property
    def tokens(self) -> int:
        return sum(batch.numel() for batch in self.batches)


def read_calibration(path: Path) -> list[str]:
    """Texts of a calibration file: a text file (one text), or JSONL with a `text` field per line."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"--calibration {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"--calibration {path}: not UTF-8 text; give a text or JSONL file") from None
    if path.suffix != ".jsonl":
        texts = [raw] if raw.strip() else []
    else:
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"--calibration {path}: line {number} is not JSON; write one "
                                 '{"text": ...} object per line') from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InputError(f"--calibration {path}: line {number} has no string field 'text'")
            texts.append(record["text"])
    if not texts:
        raise InputError(f"--calibration {path}: no text in it")
    return texts


def make_calibration(tokenizer, texts: list[str], source: str, window: int, max_tokens: int,
                     batch_size: int = 8) -> Calibration:
    """Up to `max_tokens` tokens of `texts` (separated by EOS) in windows of `window` tokens,
    each starting with BOS; a last window shorter than the others is dropped if any is full."""
    if tokenizer is None:
        raise InputError("the checkpoint ships no tokenizer; the search needs one to read calibration text")
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(stream) >= max_tokens:
            break
    body = window - 1
    full_windows = min(max(1, max_tokens // window), len(stream) // body)
    windows = [[tokenizer.bos_token_id, *stream[i * body:(i + 1) * body]] for i in range(full_windows)]
    windows = windows or [[tokenizer.bos_token_id, *stream[:body]]]  # shorter than one window: all of it
    if not windows or len(windows[0]) < 2:
        raise InputError(f"calibration text from {source} is too short; give at least a few sentences")
    batches = tuple(torch.tensor(windows[start:start + batch_size]) for start in range(0, len(windows), batch_size))
    return Calibration(batches, source)


def texts_digest(texts: list[str]) -> str:
    """The calibration texts' identity: a SHA-256 of their content."""
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


@dataclass(frozen=True)
class Reference:
    """The full model's next-token distributions, reduced to top-k plus the rest, per batch."""

    top_logprobs: tuple[torch.Tensor, ...]
    top_ids: tuple[torch.Tensor, ...]
    rest_logprobs: tuple[torch.Tensor, ...]
    top_k: int


def _logprobs(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    device = model.get_input_embeddings().weight.device
    return torch.log_softmax(model(input_ids=batch.to(device)).logits.float(), dim=-1)


def _rest(logprobs: torch.Tensor, top_ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `top_ids` (-inf when they cover the vocabulary)."""
    return logprobs.scatter(-1, top_ids, float("-inf")).logsumexp(-1)


@torch.no_grad()
def reference_distributions(model: PreTrainedModel, calibration: Calibration, top_k: int) -> Reference:
    tops, ids, rests = [], [], []
    for batch in calibration.batches:
        logprobs = _logprobs(model, batch)
        top = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
        tops.append(top.values)
        ids.append(top.indices)
        rests.append(_rest(logprobs, top.indices))
    return Reference(tuple(tops), tuple(ids), tuple(rests), top_k)


@torch.no_grad()
def kl_to_reference(model: PreTrainedModel, calibration: Calibration, reference: Reference) -> float:
    """Mean per-token KL(full || submodel) over the k + 1 outcomes the reference keeps."""
    total, count = 0.0, 0
    for batch, p_top, ids, p_rest in zip(calibration.batches, reference.top_logprobs, reference.top_ids,
                                         reference.rest_logprobs):
        q = _logprobs(model, batch)
        q_top, q_rest = q.gather(-1, ids.to(q.device)), _rest(q, ids.to(q.device))
        p_top, p_rest = p_top.to(q.device), p_rest.to(q.device)
        kl = (p_top.exp() * (p_top - q_top)).sum(-1)
        kl = kl + torch.where(torch.isinf(p_rest), 0.0, p_rest.exp() * (p_rest - q_rest))
        total += float(kl.double().sum())
        count += kl.numel()
    return total / count


@torch.no_grad()
def perplexity_of(model: PreTrainedModel, calibration: Calibration) -> float:
    """Perplexity of every window's tokens after its BOS."""
    total, count = 0.0, 0
    for batch in calibration.batches:
        logprobs = _logprobs(model, batch)[:, :-1]
        targets = batch[:, 1:].to(logprobs.device)
        total -= float(logprobs.gather(-1, targets[..., None]).double().sum())
        count += targets.numel()
    return math.exp(total / count)


def measure_candidate(full: PreTrainedModel, plan, calibration: Calibration,
                      reference: Reference | None) -> tuple[float, float, float]:
    """(objective, seconds to build the elastic submodel, seconds to evaluate it) of one
    candidate of `full` (`plan` on the full model's text layout): KL to `reference`, or
    perplexity without one."""
    from matlab.core.elastic import build_submodel

    started = time.perf_counter()
    submodel = build_submodel(full, plan)
    built = time.perf_counter()
    value = kl_to_reference(submodel, calibration, reference) if reference is not None \
        else perplexity_of(submodel, calibration)
    return value, built - started, time.perf_counter() - built
