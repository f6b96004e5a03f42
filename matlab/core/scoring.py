"""Log-likelihood scoring and perplexity, batched and padding-correct."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from matlab.errors import NonFiniteError

NON_FINITE = ("the model's logits are not finite (NaN or inf), so nothing was scored: a weight or an adapter holds "
              "NaN or inf, or the dtype overflows; check the checkpoint, or run in float32")


def check_finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """`logits`, or NonFiniteError: a NaN scores as an ordinary number downstream (an argmax
    of NaN logits picks a token; an accuracy from them looks like any other)."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(NON_FINITE)
    return logits


@dataclass(frozen=True)
class ContinuationScore:
    """Log-probabilities of a continuation's tokens given its context."""

    token_logprobs: tuple[float, ...]
    is_greedy: bool

    @property
    def total(self) -> float:
        return float(sum(self.token_logprobs))


def _device(model: PreTrainedModel) -> torch.device:
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def score_continuations(model: PreTrainedModel, requests: list[tuple[list[int], list[int]]],
                        batch_size: int = 8, max_length: int | None = None,
                        pad_id: int = 0) -> list[ContinuationScore]:
    """Score each (context ids, continuation ids) pair; contexts must not be empty.

    Sequences are right-padded with an attention mask, so real tokens keep their positions and
    never attend to padding; over-long inputs lose tokens on the left. Requests are batched
    longest first, requests with identical inputs share one row, and results come back in the
    caller's order.
    """
    device = _device(model)
    prepared = []
    for index, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError(f"request {index}: context and continuation must both be non-empty "
                             "(start an empty context with the BOS token)")
        tokens = list(context) + list(continuation)
        if max_length is not None:
            if len(continuation) > max_length:
                raise ValueError(f"request {index}: continuation of {len(continuation)} tokens exceeds "
                                 f"max_length {max_length}")
            tokens = tokens[-(max_length + 1):]
        prepared.append(tokens)
    # Requests whose model inputs are identical (the choices of a multiple-choice question that
    # are one token each share their context) are computed once, as lm-eval's own HF model does.
    rows: dict[tuple[int, ...], list[int]] = {}
    for index, tokens in enumerate(prepared):
        rows.setdefault(tuple(tokens[:-1]), []).append(index)
    inputs_list = sorted(rows, key=len, reverse=True)
    results: list[ContinuationScore | None] = [None] * len(requests)
    for batch_start in range(0, len(inputs_list), batch_size):
        batch = inputs_list[batch_start:batch_start + batch_size]
        width = len(batch[0])
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, inputs in enumerate(batch):
            input_ids[row, :len(inputs)] = torch.tensor(inputs)
            attention[row, :len(inputs)] = 1
        logits = check_finite_logits(model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits)
        for row, inputs in enumerate(batch):
            for index in rows[inputs]:
                tokens, continuation = prepared[index], requests[index][1]
                start = len(tokens) - len(continuation) - 1
                logprobs = torch.log_softmax(logits[row, start:start + len(continuation)].float(), dim=-1)
                targets = torch.tensor(continuation, device=device)
                chosen = logprobs.gather(-1, targets[:, None])[:, 0]
                greedy = bool((logprobs.argmax(-1) == targets).all())
                results[index] = ContinuationScore(tuple(chosen.tolist()), greedy)
    return results  # type: ignore[return-value]


@torch.no_grad()
def perplexity(model: PreTrainedModel, ids: list[int], window: int = 512, stride: int | None = None) -> float:
    """Perplexity of a token sequence, scored in overlapping windows of `window` tokens.

    Each window predicts only tokens not predicted by an earlier window, with up to
    `window - stride` tokens of context carried over.
    """
    stride = stride or window // 2
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    total, count, predicted_upto = 0.0, 0, 1  # ids[0] is never predicted
    start = 0
    while predicted_upto < len(ids):
        end = min(len(ids), start + window)
        context = ids[start:predicted_upto]
        continuation = ids[predicted_upto:end]
        score = score_continuations(model, [(context, continuation)])[0]
        total += score.total
        count += len(continuation)
        predicted_upto = end
        start = max(0, end - (window - stride))
    return math.exp(-total / count)
