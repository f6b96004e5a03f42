"""What a machine can hold, and what a training step will need: checked before anything is
allocated, so that a number typed by mistake is one line with the arithmetic, not a machine
that swaps or a process the kernel kills.

The step estimate is a lower bound (a step needs at least this much, usually more): the
float32 logits with their log-softmax and gradient, and per decoder layer the hidden states
and FFN activations autograd keeps for the backward pass. It refuses only what cannot fit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from matlab.arch.facts import ArchFacts, facts_from_checkpoint
from matlab.errors import InputError

_FLOAT32 = 4
AUTO = "auto"  # the run dtype a command picks: float32 where it fits, else bfloat16
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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


def text_model_bytes(directory: Path, dtype: str) -> int:
    """Bytes the text model of checkpoint `directory` holds at run dtype `dtype` (the text
    tensors its headers name; towers are never read)."""
    from matlab.io.reader import CheckpointFiles

    facts = facts_from_checkpoint(directory)
    elements = sum(math.prod(info.shape) for name, info in CheckpointFiles(directory).tensors.items()
                   if facts.family.text_only_name(name, facts.is_multimodal) is not None)
    return elements * DTYPE_BYTES[dtype]


def check_model_fits(directory: Path, dtype: str, device: str = "cpu") -> None:
    """InputError naming what fits where the text model at `dtype` is more than `device` has
    available (a model the machine cannot hold would swap or be killed, not fail)."""
    needed, available = text_model_bytes(directory, dtype), available_memory(device)
    if needed <= available:
        return
    smaller = [name for name in DTYPE_BYTES if text_model_bytes(directory, name) <= available]
    fix = (f"--dtype {smaller[-1]} holds {_size(text_model_bytes(directory, smaller[-1]))}" if smaller else
           "no dtype fits: use a machine with more memory, or --device cuda with --ple-on-cpu where a command has it")
    raise InputError(f"{directory}: its text model at {dtype} holds {_size(needed)}, more than the {_size(available)} "
                     f"available on {device}; {fix}")


def choose_dtype(directory: Path, requested: str, device: str = "cpu") -> str:
    """The run dtype: `requested`, or for "auto" float32 where the model leaves a fifth of the
    available memory for the work, else bfloat16 (E4B's text model is 27.5 GB in float32)."""
    if requested != AUTO:
        return requested
    available = available_memory(device)
    return "float32" if text_model_bytes(directory, "float32") <= 0.8 * available else "bfloat16"
