"""What a machine can hold, and what a training step will need: checked before anything is
allocated, so that a number typed by mistake is one line with the arithmetic, not a machine
that swaps or a process the kernel kills.

The step estimate is a lower bound (a step needs at least this much, usually more): the
float32 logits with their log-softmax and gradient, and per decoder layer the hidden states
and FFN activations autograd keeps for the backward pass. It refuses only what cannot fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from matlab.arch.facts import ArchFacts
from matlab.errors import InputError

_FLOAT32 = 4


def available_memory(device: str = "cpu") -> int:
    """Bytes the device can still give: the GPU's free memory, or the kernel's MemAvailable."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform: the caller cannot check
        return 1 << 62


@dataclass(frozen=True)
class StepMemory:
    """A lower bound of the activation bytes per token of one training step, and its parts."""

    logits: int  # float32 logits, log-softmax and gradient
    layers: int  # hidden states and FFN activations kept for backward, all layers

    @property
    def per_token(self) -> int:
        return self.logits + self.layers


def step_memory(facts: ArchFacts) -> StepMemory:
    """The lower bound for the text model of `facts` (either layout)."""
    text = facts.text_config
    vocab = int(text.get("vocab_size", 0))
    hidden = int(text.get("hidden_size", 0)) * int(text.get("altup_num_inputs", 1) or 1)
    per_layer = sum(hidden + 2 * int(width) for width in facts.ffn_widths)
    return StepMemory(3 * vocab * _FLOAT32, per_layer * _FLOAT32)


def _size(count: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,} B"


def check_batch_fits(option: str, batch_size: int, window: int, facts: ArchFacts, device: str = "cpu",
                     windows: int | None = None) -> None:
    """InputError with the arithmetic when `batch_size` windows of `window` tokens (or the
    `windows` a step really takes, where the data has fewer) need more activation memory in one
    step than `device` has available."""
    step = step_memory(facts)
    needed = min(batch_size, windows or batch_size) * window * step.per_token
    available = available_memory(device)
    if needed <= available:
        return
    fits = max(0, available // max(1, window * step.per_token))
    raise InputError(f"{option} {batch_size}: {batch_size:,} windows x {window:,} tokens x {step.per_token:,} B "
                     "a token "
                     f"(float32 logits {step.logits:,} B, {len(facts.ffn_widths)} layers' activations "
                     f"{step.layers:,} B) need at least {_size(needed)} in one step, more than the "
                     f"{_size(available)} available on {device}; "
                     + (f"use {option} {fits} or less" if fits else f"use a shorter window than {window}"))
