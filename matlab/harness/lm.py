"""The lm-evaluation-harness model over the shared inference core: lm-eval's own `HFLM`,
handed a submodel (elastic or loaded from a checkpoint) and its tokenizer object.

Tokenization, context/continuation splitting, batching, rolling windows, truncation and
batched generation with stop sequences are `HFLM`'s, so a score is the number lm-eval itself
reports for that slice. What differs is kept here, each difference named:

1. The model and tokenizer are objects, never looked up on the Hub.
2. Rolling log-likelihood takes a BOS policy (`BOS_POLICIES`): `lm-eval` is HFLM's default,
   in which a tokenizer that adds BOS by itself puts a second BOS after the window's prefix
   token; `single` encodes the text without special tokens, so each window starts with one BOS.
"""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM
from transformers import LogitsProcessor, LogitsProcessorList

from matlab.core.scoring import check_finite_logits
from matlab.core.submodel import Submodel
from matlab.errors import CheckpointError, InputError

BOS_POLICIES = ("lm-eval", "single")
DEFAULT_BOS_POLICY = "lm-eval"


def check_bos_policy(policy: str) -> str:
    if policy not in BOS_POLICIES:
        raise InputError(f"--bos-policy {policy}: choose one of {', '.join(BOS_POLICIES)}")
    return policy


class MatformerLM(HFLM):
    """`HFLM` over a submodel; `bos_policy` decides BOS in rolling log-likelihood windows."""

    def __init__(self, submodel: Submodel, batch_size: int = 16, max_length: int | None = None,
                 bos_policy: str = DEFAULT_BOS_POLICY) -> None:
        if submodel.tokenizer is None:
            raise CheckpointError("the checkpoint ships no tokenizer (tokenizer.json or tokenizer.model), and "
                                  "lm-eval tasks need one; copy the base model's tokenizer files into it")
        # Difference 1: objects in, no Hub lookups.
        super().__init__(pretrained=submodel.model, tokenizer=submodel.tokenizer, batch_size=batch_size,
                         max_length=max_length)
        self.submodel = submodel
        self.bos_policy = check_bos_policy(bos_policy)

    # Difference 3: lm-eval's own tqdm bars are off by default (lm-eval passes `disable=`
    # explicitly, so TQDM_DISABLE cannot reach them): the workbench draws one progress display.
    def loglikelihood(self, requests, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def generate_until(self, requests, disable_tqdm: bool = True) -> list[str]:
        return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, **options):
        # HFLM's rolling windows call this with disable_tqdm=False written out.
        return super()._loglikelihood_tokens(requests, disable_tqdm=True, **options)

    # Difference 4: non-finite logits fail the evaluation, in scoring and in generation.
    def _model_call(self, inps, attn_mask=None, labels=None):
        return check_finite_logits(super()._model_call(inps, attn_mask=attn_mask, labels=labels))

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        processors = LogitsProcessorList(generation_kwargs.pop("logits_processor", None) or [])
        processors.insert(0, _FiniteLogits())
        return super()._model_generate(context, max_length, stop, logits_processor=processors, **generation_kwargs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = True) -> list[float]:
        if self.bos_policy == "lm-eval":
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        # Difference 2: `single` encodes each text without special tokens (HFLM's own switch,
        # add_bos_token=False), so the prefix token is the window's only BOS.
        previous, self.add_bos_token = self.add_bos_token, False
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self.add_bos_token = previous


class _FiniteLogits(LogitsProcessor):
    """Generation's check: each step's logits finite, before any other processor reads them."""

    def __call__(self, input_ids, scores):
        return check_finite_logits(scores)
