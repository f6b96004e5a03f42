"""Text in, text out: the core's scoring, generation and perplexity over a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

from matlab.core.generation import generate_ids
from matlab.core.scoring import perplexity, score_continuations
from matlab.core.submodel import Submodel
from matlab.errors import CheckpointError, InputError


@dataclass(frozen=True)
class TextScore:
    tokens: list[str]
    logprobs: list[float]

    @property
    def total_logprob(self) -> float:
        return float(sum(self.logprobs))

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "logprobs": self.logprobs, "total_logprob": self.total_logprob}


def _tokenizer(submodel: Submodel):
    if submodel.tokenizer is None:
        raise CheckpointError("the checkpoint ships no tokenizer (tokenizer.json or tokenizer.model); "
                              "copy the base model's tokenizer files into it")
    return submodel.tokenizer


def encode(submodel: Submodel, text: str) -> list[int]:
    """Token ids of `text`, starting with BOS (added if the tokenizer does not add it)."""
    tokenizer = _tokenizer(submodel)
    ids = tokenizer(text).input_ids
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def score_text(submodel: Submodel, text: str) -> TextScore:
    """Log-probability of every token of `text` after BOS."""
    ids = encode(submodel, text)
    if len(ids) < 2:
        raise InputError("the text is empty; give at least one token to score")
    score = score_continuations(submodel.model, [(ids[:1], ids[1:])])[0]
    return TextScore(_tokenizer(submodel).convert_ids_to_tokens(ids[1:]), list(score.token_logprobs))


def generate_text(submodel: Submodel, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0) -> str:
    new_ids = generate_ids(submodel.model, encode(submodel, prompt), max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, seed=seed,
                           eos_token_id=_tokenizer(submodel).eos_token_id)
    return _tokenizer(submodel).decode(new_ids, skip_special_tokens=True)


def text_perplexity(submodel: Submodel, text: str, window: int = 512) -> tuple[float, int]:
    """(perplexity, tokens predicted) of a text."""
    ids = encode(submodel, text)
    return perplexity(submodel.model, ids, window=window), len(ids) - 1
