"""Calibration text, and the full model's next-token distributions on it: what the search
measures a submodel by and what healing distils.

Text is read lazily, only as far as the tokens used (a text file as one text in pieces, JSONL
one text per line's `text` field), cut into windows that each start with BOS. The full
model's distributions are computed once and kept reduced to its top-k tokens plus one bucket
for the rest of the vocabulary (E4B's full distribution is 1 MB per token in fp32); the KL of
a submodel from them (`topk_kl`) is taken between the two distributions coarsened to those
k + 1 outcomes. By the log-sum inequality this never exceeds the exact KL, and equals it when
k is the vocabulary size. The search measures it without gradients (`kl_to_reference`),
healing trains on it (`matlab.training.distill`): one formula for both.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from matlab.core.scoring import check_finite_logits
from matlab.errors import InputError

# A text is tokenized in pieces of at most this many characters, so that a long one (a whole
# file) is read and tokenized only as far as the tokens needed; a text up to this long is one
# piece, tokenized exactly as a whole.
PIECE_CHARS = 1 << 20


_READ_BYTES = 1 << 20


# A JSONL record is parsed whole, so its line is held whole: at most this long.
MAX_JSONL_LINE_BYTES = 16 << 20


@dataclass(frozen=True)
class Calibration:
    """Token windows, each starting with BOS, batched as [batch, window] tensors."""

    batches: tuple[torch.Tensor, ...]
    source: str
    texts_sha256: str = ""  # of the text read to make the windows (`texts_digest` of it)

    @property
    def tokens(self) -> int:
        return sum(batch.numel() for batch in self.batches)


# A calibration text: a string, or its pieces in order (a file too long to hold as one string).
CalibrationText = str | Iterable[str]


def _cut(text: str, limit: int) -> int:
    """Where a piece of `text` of at most `limit` characters ends: before the last run of
    whitespace, preferring one with a line end (tokens start with their space, and runs of
    newlines or spaces are tokens of their own, so no token spans the cut); `limit` if none."""
    position = text.rfind("\n", 1, limit)
    if position < 1:
        position = max(text.rfind(" ", 1, limit), text.rfind("\t", 1, limit))
    while position > 0 and text[position - 1].isspace():
        position -= 1
    return position if position > 0 else limit


def text_pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `limit` characters (one piece if it is no longer)."""
    yield from _file_pieces(iter((text,)), limit)


def _decoded(stream, path: Path) -> Iterator[str]:
    """The UTF-8 text of a binary stream, read a block at a time, line ends read as `\\n` (as
    `Path.read_text` does); a byte that is not UTF-8 is an InputError naming its line."""
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(), translate=True)
    line = 1
    while True:
        block = stream.read(_READ_BYTES)
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as error:
            line += block[:max(error.start, 0)].count(b"\n")
            raise InputError(f"--calibration {path}: not UTF-8 text (line {line}); give a text or JSONL file") from None
        line += block.count(b"\n")
        if text:
            yield text
        if not block:
            return


def _file_pieces(blocks: Iterator[str], limit: int = PIECE_CHARS) -> Iterator[str]:
    """Pieces of a text arriving in blocks, cut as `text_pieces` cuts one string."""
    pending = ""
    for block in blocks:
        pending += block
        while len(pending) > limit:
            cut = _cut(pending, limit)
            yield pending[:cut]
            pending = pending[cut:]
    yield pending


def _jsonl_lines(stream, path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, bytes) of each line, none held longer than MAX_JSONL_LINE_BYTES: a longer line
    is measured in blocks (never held whole) and refused with its length."""
    number = 0
    while True:
        raw = stream.readline(MAX_JSONL_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_JSONL_LINE_BYTES and not raw.endswith(b"\n"):
            length = len(raw)
            while not raw.endswith(b"\n"):
                raw = stream.readline(_READ_BYTES)
                if not raw:
                    break
                length += len(raw)
            raise InputError(f"--calibration {path}: line {number} is {length:,} bytes long, and a JSONL line is read "
                             f"whole (at most {MAX_JSONL_LINE_BYTES >> 20} MiB): split its text over several lines, "
                             "or give it as a plain text file, which is read only as far as the tokens used")
        yield number, raw


def _jsonl_texts(stream, path: Path) -> Iterator[str]:
    for number, raw in _jsonl_lines(stream, path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"--calibration {path}: line {number} is not UTF-8 text; write one "
                             '{"text": ...} object per line') from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise InputError(f"--calibration {path}: line {number} is not JSON; write one "
                             '{"text": ...} object per line') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"--calibration {path}: line {number} has no string field 'text'; write one "
                             '{"text": ...} object per line')
        text = record["text"]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate escape: valid JSON, but no character
            raise InputError(f"--calibration {path}: line {number} has \\u{ord(text[error.start]):04x} in 'text', "
                             "half of a surrogate pair and not UTF-8 text; write the character itself, or both "
                             "halves of its pair") from None
        yield text


def read_calibration(path: Path) -> Iterator[CalibrationText]:
    """The texts of a calibration file, read lazily, as far as they are used: a text file is one
    text (in pieces), JSONL gives one text per line's `text` field. A file that cannot be used
    (not UTF-8, a line that is not a text record, no text at all) is an InputError naming the
    file and line, raised when the reading gets there."""
    try:
        stream = path.open("rb")
    except OSError as error:
        raise InputError(f"--calibration {path}: cannot read it ({error.strerror})") from None
    return _calibration_texts(stream, path)


def _calibration_texts(stream, path: Path) -> Iterator[CalibrationText]:
    with stream:
        found = False
        if path.suffix == ".jsonl":
            for text in _jsonl_texts(stream, path):
                found = True
                yield text
        else:
            pieces = _file_pieces(_decoded(stream, path))
            first = next(pieces)
            # A first piece shorter than a full one is the whole file: blank, it holds no text.
            found = bool(first.strip()) or len(first) == PIECE_CHARS
            if found:
                yield itertools.chain([first], pieces)
        if not found:
            raise InputError(f"--calibration {path}: no text in it")


def make_calibration(tokenizer, texts: Iterable[CalibrationText], source: str, window: int, max_tokens: int,
                     batch_size: int = 8) -> Calibration:
    """Up to `max_tokens` tokens of `texts` (separated by EOS) in windows of `window` tokens,
    each starting with BOS; a last window shorter than the others is dropped if any is full.
    The texts are read and tokenized a piece at a time, only as far as the windows need."""
    if tokenizer is None:
        raise InputError("the checkpoint ships no tokenizer; the search needs one to read calibration text")
    body = window - 1
    # Once the stream holds this many tokens the windows are decided: the rest of the text is not read.
    needed = max(1, max_tokens // window) * body
    stream: list[int] = []
    digest = hashlib.sha256()
    iterator = iter(texts)
    try:
        for number, text in enumerate(iterator):
            digest.update(b"\x00" if number else b"")
            for piece in (text_pieces(text) if isinstance(text, str) else text):
                digest.update(piece.encode())
                stream += tokenizer(piece, add_special_tokens=False).input_ids
                if len(stream) >= needed:
                    break
            else:
                stream.append(tokenizer.eos_token_id)
                if len(stream) < max_tokens:
                    continue
            break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a file's reader: closes the file
            close()
    full_windows = min(max(1, max_tokens // window), len(stream) // body)
    windows = [[tokenizer.bos_token_id, *stream[i * body:(i + 1) * body]] for i in range(full_windows)]
    windows = windows or [[tokenizer.bos_token_id, *stream[:body]]]  # shorter than one window: all of it
    if not windows or len(windows[0]) < 2:
        raise InputError(f"calibration text from {source} is too short; give at least a few sentences")
    batches = tuple(torch.tensor(windows[start:start + batch_size]) for start in range(0, len(windows), batch_size))
    return Calibration(batches, source, digest.hexdigest())


def window_count(calibration: Calibration) -> int:
    """How many windows the calibration holds."""
    return sum(len(batch) for batch in calibration.batches)


def window_subset(calibration: Calibration, reference: Reference | None, windows: tuple[int, ...],
                  ) -> tuple[Calibration, Reference | None]:
    """The calibration (and the reference's distributions) on `windows` only (indices in the
    order the windows were cut): the objective on part of the tokens, for screening."""
    places = [(number, row) for number, batch in enumerate(calibration.batches) for row in range(len(batch))]
    chosen = [places[window] for window in windows]

    def gather(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        rows = [tensors[number][row] for number, row in chosen]
        size = len(calibration.batches[0])
        return tuple(torch.stack(rows[start:start + size]) for start in range(0, len(rows), size))

    subset = Calibration(gather(calibration.batches), calibration.source, calibration.texts_sha256)
    if reference is None:
        return subset, None
    return subset, Reference(gather(reference.top_logprobs), gather(reference.top_ids),
                             gather(reference.rest_logprobs), reference.top_k)


def texts_digest(texts: Iterable[CalibrationText]) -> str:
    """The calibration texts' identity: a SHA-256 of their content (of all of it: read through,
    a file's texts are hashed a piece at a time)."""
    digest = hashlib.sha256()
    for number, text in enumerate(texts):
        digest.update(b"\x00" if number else b"")
        for piece in ([text] if isinstance(text, str) else text):
            digest.update(piece.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Reference:
    """The full model's next-token distributions, reduced to top-k plus the rest, per batch."""

    top_logprobs: tuple[torch.Tensor, ...]
    top_ids: tuple[torch.Tensor, ...]
    rest_logprobs: tuple[torch.Tensor, ...]
    top_k: int


def _logprobs(model: PreTrainedModel, batch: torch.Tensor) -> torch.Tensor:
    device = model.get_input_embeddings().weight.device
    return torch.log_softmax(check_finite_logits(model(input_ids=batch.to(device)).logits).float(), dim=-1)


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
        kl = topk_kl(_logprobs(model, batch), p_top, ids, p_rest)
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



def topk_kl(logprobs: torch.Tensor, top_logprobs: torch.Tensor, top_ids: torch.Tensor,
            rest_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(full || submodel) over the reference's k + 1 outcomes: the submodel's
    log-probabilities `logprobs` against the full model's top-k (`top_logprobs` at `top_ids`)
    and the mass of the rest (`rest_logprobs`, -inf where the top-k cover the vocabulary).
    Differentiable in `logprobs`."""
    ids = top_ids.to(logprobs.device)
    q_top, q_rest = logprobs.gather(-1, ids), _rest(logprobs, ids)
    p_top, p_rest = top_logprobs.to(logprobs.device), rest_logprobs.to(logprobs.device)
    kl = (p_top.exp() * (p_top - q_top)).sum(-1)
    return kl + torch.where(torch.isinf(p_rest), 0.0, p_rest.exp() * (p_rest - q_rest))
