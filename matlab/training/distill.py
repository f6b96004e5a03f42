"""Distillation from the full model, as the search measures a slice: its next-token
distributions computed once on calibration text and kept as top-k log-probabilities plus the
mass of the rest (`matlab.search.objective`), the slice trained to match them, and measured on
held-out text by the search's own `kl_to_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from matlab.core.calibration import (
    Calibration,
    Reference,
    kl_to_reference,
    make_calibration,
    perplexity_of,
    reference_distributions,
    topk_kl,
)
from matlab.errors import InputError
from matlab.training.data import read_text_file

HELDOUT_SHARE = 0.1  # of the calibration windows, held out for the before/after measurement


def distillation_loss(logits: torch.Tensor, top_logprobs: torch.Tensor, top_ids: torch.Tensor,
                      rest_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(full || slice) over the reference's k + 1 outcomes, differentiable in
    `logits` (the slice's): `topk_kl`, the formula the search measures with."""
    return topk_kl(torch.log_softmax(logits.float(), dim=-1), top_logprobs, top_ids, rest_logprobs).mean()


@dataclass(frozen=True)
class Distillation:
    """Training and held-out calibration, each with the full model's reference distributions."""

    train: Calibration
    heldout: Calibration
    train_reference: Reference
    heldout_reference: Reference

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input ids, top log-probs, top ids, rest log-probs) of training batch `index`."""
        reference = self.train_reference
        return (self.train.batches[index], reference.top_logprobs[index], reference.top_ids[index],
                reference.rest_logprobs[index])

    def measure(self, model) -> dict[str, float]:
        """KL to the full model and perplexity of `model` on the held-out text."""
        return {"kl": round(kl_to_reference(model, self.heldout, self.heldout_reference), 6),
                "perplexity": round(perplexity_of(model, self.heldout), 4)}


def nano_calibration_text(documents: int) -> tuple[list[str], str]:
    """The embedded nano model's default: the search's calibration text, `documents` of it."""
    from matlab.nano.world import CALIBRATION_SEED, calibration_text, make_world

    return calibration_text(make_world(), documents), f"nano-world calibration text (seed {CALIBRATION_SEED})"


def split_calibration(tokenizer, calibration: Path | None, heldout: Path | None, embedded_nano: bool, window: int,
                      tokens: int, batch_size: int) -> tuple[Calibration, Calibration]:
    """(training, held-out) calibration: from `--calibration` (or nano's default text) and, without
    `--heldout`, its last tenth of windows held out (disjoint text, never trained on)."""
    if calibration is not None:
        texts, source = read_text_file(calibration, "--calibration"), str(calibration)
    elif embedded_nano:
        texts, source = nano_calibration_text(max(1, tokens // 48))  # a nano document is ~70 tokens
    else:
        raise InputError("--calibration is required: healing distills the full model on text like the slice's "
                         "use (a text file, or JSONL with a 'text' field per line); only the embedded nano model "
                         "has a default")
    whole = make_calibration(tokenizer, texts, source, window, tokens, batch_size)
    if heldout is not None:
        held = make_calibration(tokenizer, read_text_file(heldout, "--heldout"), str(heldout), window, tokens,
                                batch_size)
        return whole, held
    windows = torch.cat(whole.batches)
    held_count = max(1, round(len(windows) * HELDOUT_SHARE))
    if len(windows) - held_count < 1:
        raise InputError(f"--calibration {source}: {len(windows)} window(s) of {window} tokens, too few to hold out "
                         "a tenth and train on the rest; give more text, or held-out text with --heldout")

    def batched(rows: torch.Tensor, what: str) -> Calibration:
        batches = tuple(rows[start:start + batch_size] for start in range(0, len(rows), batch_size))
        return Calibration(batches, f"{source} ({what})", whole.texts_sha256)

    return (batched(windows[:-held_count], f"first {len(windows) - held_count} windows"),
            batched(windows[-held_count:], f"last {held_count} windows, held out"))


def prepare(full, train: Calibration, heldout: Calibration, top_k: int) -> Distillation:
    """The full model's reference distributions on both (computed once, before any training)."""
    return Distillation(train, heldout, reference_distributions(full, train, top_k),
                        reference_distributions(full, heldout, top_k))
