"""An lm-evaluation-harness `LM` over the shared inference core.

It is handed a submodel (elastic or loaded from a checkpoint) and its tokenizer object, so
lm-eval never looks anything up on the Hub.
"""

from __future__ import annotations

from lm_eval.api.model import LM

from matlab.core.generation import generate_ids
from matlab.core.scoring import score_continuations
from matlab.core.submodel import Submodel
from matlab.errors import CheckpointError


class MatformerLM(LM):
    """Log-likelihood, rolling log-likelihood and greedy generation for lm-eval tasks."""

    def __init__(self, submodel: Submodel, batch_size: int = 16, max_length: int = 2048) -> None:
        super().__init__()
        if submodel.tokenizer is None:
            raise CheckpointError("the checkpoint ships no tokenizer (tokenizer.json or tokenizer.model), and "
                                  "lm-eval tasks need one; copy the base model's tokenizer files into it")
        self.submodel = submodel
        self.tokenizer = submodel.tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    def _encode(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # Trailing spaces of the context belong to the continuation (as lm-eval's own models do),
        # and the pair is encoded whole so that merges across the boundary are honoured.
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation, special=True)
        context_ids = self._encode(context, special=True)
        return context_ids, whole[len(context_ids):]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            if context:
                pairs.append(self._encode_pair(context, continuation))
            else:
                pairs.append(([self.tokenizer.bos_token_id], self._encode(continuation, special=False)))
        scores = score_continuations(self.submodel.model, pairs, batch_size=self.batch_size,
                                     max_length=self.max_length, pad_id=self.tokenizer.pad_token_id or 0)
        return [(score.total, score.is_greedy) for score in scores]

    def loglikelihood_rolling(self, requests) -> list[float]:
        pairs, owners = [], []
        for number, request in enumerate(requests):
            (text,) = request.args
            ids = [self.tokenizer.bos_token_id, *self._encode(text, special=False)]
            # Windows of up to max_length predictions; each is conditioned on as many of the
            # tokens just before it as fit in max_length + 1 (the first window on BOS alone).
            for start in range(1, len(ids), self.max_length):
                continuation = ids[start:start + self.max_length]
                pairs.append((ids[max(0, start + len(continuation) - self.max_length - 1):start], continuation))
                owners.append(number)
        scores = score_continuations(self.submodel.model, pairs, batch_size=self.batch_size,
                                     pad_id=self.tokenizer.pad_token_id or 0)
        totals = [0.0] * len(requests)
        for number, score in zip(owners, scores):
            totals[number] += score.total
        return totals

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in requests:
            context, options = request.args
            until = options.get("until") or [self.tokenizer.eos_token]
            until = [until] if isinstance(until, str) else list(until)
            new_ids = generate_ids(self.submodel.model, self._encode(context, special=True),
                                   max_new_tokens=int(options.get("max_gen_toks", 64)),
                                   eos_token_id=self.tokenizer.eos_token_id)
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs
