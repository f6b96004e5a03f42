"""Writing a healed slice: the slicer's checkpoint of the slice, its healed weights written over
the copied ones, read back by loading it, and its card and provenance saying what was done.

The slicer (`slice_checkpoint`) writes the slice (layout, config, tokenizer, card, provenance,
read-back check) inside this output's own staging folder; the tensors healing changed are then
overwritten in place (same names, shapes and dtype, so the shards' headers stand), and the
whole output is published at once (`staged_output`): a failure anywhere leaves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from matlab.arch.facts import ArchFacts
from matlab.errors import CheckpointError
from matlab.io.reader import CheckpointFiles
from matlab.io.staging import OUTPUT_MARKER, staged_output
from matlab.plan import SlicePlan
from matlab.slice_config import SliceConfig
from matlab.slicing.adapters import cut_tensor
from matlab.slicing.slicer import slice_checkpoint
from matlab.training.cards import add_heal_record
from matlab.util.dtypes import torch_dtype


def _output_tensors(model: torch.nn.Module, names: list[str], facts: ArchFacts, config: SliceConfig,
                    text_only: bool) -> dict[str, torch.Tensor]:
    """The sliced checkpoint's tensor name -> its healed value, for the full model's weights
    `names` (text-layout names of the loaded model), cut as the slicer cut them from the checkpoint."""
    family, plan = facts.family, SlicePlan.build(config, facts)
    weights = dict(model.named_parameters())
    tensors = {}
    for name in names:
        weight = weights[name].detach()
        stored = facts.text_prefix + family.text_relative(name, False)  # its name in the checkpoint's layout
        spec = plan.tensor_spec(stored, tuple(weight.shape), text_only=text_only)
        if spec is not None:
            tensors[spec.target] = cut_tensor(weight, spec)
    return tensors


def _overwrite(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write each tensor's bytes over the slicer's copy, in the stored dtype."""
    stored = CheckpointFiles(directory).tensors
    for name, tensor in tensors.items():
        info = stored.get(name)
        if info is None or tuple(info.shape) != tuple(tensor.shape):
            raise CheckpointError(f"healed tensor {name} {list(tensor.shape)} does not match the slice written "
                                  f"({'nothing' if info is None else list(info.shape)})")
        data = tensor.to("cpu", torch_dtype(info.dtype)).contiguous().view(torch.uint8).numpy().tobytes()
        descriptor = os.open(info.file, os.O_WRONLY)
        try:
            written = os.pwrite(descriptor, data, info.offset)
        finally:
            os.close(descriptor)
        if written != info.nbytes:
            raise OSError(f"{info.file}: wrote {written} of {info.nbytes} bytes of {name}")


def write_healed(out: Path, *, force: bool, source: Path, facts: ArchFacts, config: SliceConfig, config_source: str,
                 model: torch.nn.Module, changed: list[str], text_only: bool, command: str | None,
                 inputs: tuple, record: Callable[[Path], dict]) -> None:
    """Publish the slice `config` of `source` with the full model's healed weights `changed`
    (names in `model`) written in; `record(folder)` measures the written slice and returns the
    provenance's `heal` entry."""
    with staged_output(out, force, inputs=inputs) as temporary:
        sliced = temporary / "slice"
        slice_checkpoint(source, config, sliced, config_source=config_source, text_only=text_only, command=command)
        for entry in sliced.iterdir():
            if entry.name != OUTPUT_MARKER:
                os.rename(entry, temporary / entry.name)
        (sliced / OUTPUT_MARKER).unlink()
        sliced.rmdir()
        _overwrite(temporary, _output_tensors(model, changed, facts, config, text_only))
        add_heal_record(temporary, record(temporary))
