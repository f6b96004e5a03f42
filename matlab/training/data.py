"""Training text as token windows, and the deterministic order a run reads them in.

Files are read by the search's calibration readers (a text file is one text, JSONL one text
per line's `text` field) and cut into windows by `make_calibration`: each window starts with
BOS, texts are separated by EOS. Which windows a step trains on is a function of the seed and
the step alone (one fixed shuffle per epoch), so a resumed run reads exactly what an
uninterrupted one would have read, with no reader state to save.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from matlab.core.calibration import CalibrationText, make_calibration, read_calibration
from matlab.errors import InputError


@dataclass(frozen=True)
class Windows:
    """Token windows [count, length], each starting with BOS, and what they were read from."""

    tokens: torch.Tensor
    source: str
    texts_sha256: str

    @property
    def count(self) -> int:
        return self.tokens.shape[0]


def _for_option(error: InputError, option: str) -> InputError:
    """The readers name their option `--calibration` (they serve the search first); a training
    file is named by the option the user gave it."""
    message = str(error).replace("--calibration ", f"{option} ", 1).replace("calibration text from", "text from", 1)
    return InputError(message)


def read_windows(tokenizer, texts: Iterable[CalibrationText], source: str, length: int, max_tokens: int,
                 option: str = "--data") -> Windows:
    """Up to `max_tokens` tokens of `texts` in windows of `length` tokens (a last short window is
    dropped unless it is the only one)."""
    if tokenizer is None:
        raise InputError("the checkpoint ships no tokenizer; training needs one to read its text")
    try:
        calibration = make_calibration(tokenizer, texts, source, length, max_tokens)
    except InputError as error:
        raise _for_option(error, option) from None
    return Windows(torch.cat(calibration.batches), source, calibration.texts_sha256)


def read_text_file(path: Path, option: str = "--data") -> Iterable[CalibrationText]:
    """The texts of a text or JSONL file, read lazily; errors name `option` and the file."""
    if not Path(path).is_file():
        raise InputError(f"{option} {path}: no such file; give a text file or a JSONL file with a 'text' field "
                         "per line")
    try:
        yield from read_calibration(Path(path))
    except InputError as error:
        raise _for_option(error, option) from None


@dataclass
class WindowOrder:
    """Which windows each step reads: `batch_size` of them, from one fixed shuffle per epoch."""

    count: int
    batch_size: int
    seed: int
    _orders: dict[int, torch.Tensor] = field(default_factory=dict)

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(self.count, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))}  # one epoch held at a time: reads move forward
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return [int(self._epoch(position // self.count)[position % self.count]) for position in positions]

    def batch(self, windows: Windows, step: int) -> torch.Tensor:
        return windows.tokens[self.indices(step)]
