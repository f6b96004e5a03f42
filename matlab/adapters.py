"""Slicing a PEFT LoRA adapter the way the slicer cuts the model it was trained on.

A LoRA pair on a linear layer W (out x in) adds scale * B @ A, with A (r x in) and B (out x r).
The slicer keeps rows and columns of W (`SlicePlan.tensor_spec`: an FFN's first `width` rows of
gate/up and columns of down, a per-layer block of the PLE projection, a layer renumbered or
dropped). Keeping rows R and columns C of W + scale * B @ A is W[R, C] + scale * B[R] @ A[:, C],
so the adapter is cut with the very spec the slicer uses for W: B's rows by the spec's rows, A's
columns by its columns, the module renamed to the spec's target, dropped where W is dropped.
Merging the sliced adapter into the sliced model then gives the slice of the merged model.

What cannot be cut that way is refused in one line, naming the field or tensor: other adapter
types (DoRA's magnitude vectors are norms over whole rows of W + BA, which a cut changes),
embedding LoRA, bias LoRA, `modules_to_save` copies, and per-layer settings keyed by layer
number (`layers_to_transform`, `rank_pattern`, `alpha_pattern`) that renumbering would break.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matlab.architecture import facts_from_checkpoint
from matlab.errors import InputError
from matlab.io.reader import CheckpointFiles
from matlab.io.staging import staged_output
from matlab.plan import SlicePlan, TensorSpec
from matlab.slice_config import SliceConfig

if TYPE_CHECKING:  # torch is imported where an adapter is cut: slicing without one never loads it
    import torch

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# LoraConfig fields whose non-default value means the adapter holds something a row/column cut
# of its LoRA pairs does not slice: (field, its default, why).
UNCUTTABLE = (
    ("use_dora", False, "DoRA's magnitudes are norms over whole rows of the merged weight"),
    ("lora_bias", False, "LoRA biases are not cut"),
    ("bias", "none", "trained base biases are not cut"),
    ("fan_in_fan_out", False, "Gemma 3n has no Conv1D layers"),
    ("modules_to_save", None, "full module copies are not cut"),
    ("layers_to_transform", None, "layer numbers change when layers are skipped"),
    ("layer_replication", None, "layer numbers change when layers are skipped"),
    ("rank_pattern", {}, "its keys may name layers, whose numbers change"),
    ("alpha_pattern", {}, "its keys may name layers, whose numbers change"),
    ("target_parameters", None, "only LoRA on linear modules is cut"),
    ("trainable_token_indices", None, "embedding rows are not cut"),
)


@dataclass(frozen=True)
class AdapterSlice:
    tensors_kept: int
    tensors_dropped: int
    rank: int
    target_modules: tuple[str, ...]


def read_adapter_config(adapter: Path):
    """The adapter's LoraConfig, parsed by PEFT; InputError naming the field it cannot cut."""
    from peft import LoraConfig, PeftConfig

    if not (adapter / ADAPTER_CONFIG).is_file():
        raise InputError(f"--adapter {adapter}: no {ADAPTER_CONFIG}; pass a folder saved by PEFT's save_pretrained")
    try:
        config = PeftConfig.from_pretrained(str(adapter))
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as error:
        raise InputError(f"{adapter / ADAPTER_CONFIG}: PEFT cannot read it ({error})") from error
    if not isinstance(config, LoraConfig):
        raise InputError(f"{adapter / ADAPTER_CONFIG}: peft_type {config.peft_type.value}: only LoRA adapters "
                         "can be sliced")
    for name, default, why in UNCUTTABLE:
        value = getattr(config, name, default)
        if value not in (default, None, {}, [], False):
            raise InputError(f"{adapter / ADAPTER_CONFIG}: {name} is {value!r}: this adapter cannot be sliced "
                             f"({why}); train it without {name}")
    return config


def _base_module(key: str, adapter: Path) -> tuple[str, str]:
    """(`X.weight` of the base model, ".lora_A.weight" or ".lora_B.weight") for adapter key
    `base_model.model.X.lora_A.weight`."""
    if key.startswith(PEFT_PREFIX):
        for suffix in LORA_SUFFIXES:
            if key.endswith(suffix):
                return key[len(PEFT_PREFIX):-len(suffix)] + ".weight", suffix
    raise InputError(f"{adapter / ADAPTER_WEIGHTS}: tensor {key} is not a LoRA A/B weight of a linear module; "
                     "only those can be sliced")


def lora_tensor_spec(weight: TensorSpec, name: str, target: str, shape: tuple[int, ...], suffix: str) -> TensorSpec:
    """How the LoRA tensor `name` (A or B by `suffix`) on a weight W is cut where the slicer cuts W
    by `weight`: A (r x in) meets W's columns and keeps the kept ones, B (out x r) keeps W's kept rows."""
    if suffix.startswith(".lora_A"):
        return TensorSpec(name, target, shape, cols=weight.cols)
    return TensorSpec(name, target, shape, rows=weight.rows)


def cut_tensor(tensor: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """The kept rows and columns of `tensor`: a view where each axis keeps one range (so that
    gradients of a view reach the tensor, `matlab.training`), else a copy."""
    import torch

    for axis, ranges in ((0, spec.rows), (1, spec.cols)):
        if ranges is not None:
            pieces = [tensor.narrow(axis, start, stop - start) for start, stop in ranges]
            tensor = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=axis)
    return tensor


def plan_adapter_tensors(adapter: Path, base: CheckpointFiles, plan: SlicePlan, text_only: bool,
                         ) -> tuple[dict[str, torch.Tensor], int]:
    """The sliced adapter's tensors (PEFT names of the sliced model) and how many were dropped,
    checked against the base: every LoRA pair must sit on a 2-D weight of it of matching size."""
    from safetensors import SafetensorError, safe_open

    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        found = "adapter_model.bin: save it with safe_serialization=True" if (adapter / "adapter_model.bin").is_file() \
            else "no weights"
        raise InputError(f"--adapter {adapter}: no {ADAPTER_WEIGHTS} ({found})")
    sliced, dropped = {}, 0
    try:
        with safe_open(weights, "pt") as file:
            for key in sorted(file.keys()):
                base_name, suffix = _base_module(key, adapter)
                info = base.tensors.get(base_name)
                tensor = file.get_tensor(key)
                if info is None or len(info.shape) != 2 or tensor.ndim != 2:
                    raise InputError(f"{weights}: {key} adapts {base_name}, which the base checkpoint "
                                     f"{base.directory} has no 2-D weight of: an adapter for another base model?")
                side = 1 if suffix == ".lora_A.weight" else 0  # A (r, in) meets W's columns, B (out, r) its rows
                if tensor.shape[side] != info.shape[side]:
                    raise InputError(f"{weights}: {key} has shape {list(tensor.shape)}, which does not fit "
                                     f"{base_name} {list(info.shape)} of the base: an adapter for another base model?")
                spec = plan.tensor_spec(base_name, info.shape, text_only=text_only)
                if spec is None:
                    dropped += 1
                    continue
                lora = lora_tensor_spec(spec, key, PEFT_PREFIX + spec.target.removesuffix(".weight") + suffix,
                                        tuple(tensor.shape), suffix)
                sliced[lora.target] = cut_tensor(tensor, lora).contiguous()
    except SafetensorError as error:
        raise InputError(f"{weights}: not a valid safetensors file ({error})") from error
    if not sliced:
        raise InputError(f"{weights}: no LoRA tensor of this adapter is kept by the slice")
    return sliced, dropped


@dataclass(frozen=True)
class SlicedAdapter:
    """An adapter cut for one plan, checked and held in memory (adapters are small), not yet written."""

    config: object  # peft.LoraConfig
    tensors: dict[str, torch.Tensor]
    dropped: int

    def write(self, out: Path, sliced_model: str) -> AdapterSlice:
        """Write it into the existing folder `out`, `sliced_model` recorded as its base."""
        from safetensors.torch import save_file

        self.config.base_model_name_or_path = sliced_model
        self.config.save_pretrained(str(out))
        save_file(self.tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        targets = self.config.target_modules
        return AdapterSlice(len(self.tensors), self.dropped, int(self.config.r),
                            (targets,) if isinstance(targets, str) else tuple(sorted(targets)))


def cut_adapter(adapter: Path, base: CheckpointFiles, plan: SlicePlan, *, text_only: bool) -> SlicedAdapter:
    """The slice for `plan` of the LoRA adapter at `adapter`, trained on the checkpoint `base`
    (its files, already opened by the caller)."""
    adapter = Path(adapter)
    config = read_adapter_config(adapter)
    tensors, dropped = plan_adapter_tensors(adapter, base, plan, text_only)
    return SlicedAdapter(config, tensors, dropped)


def adapter_identity(adapter: Path) -> dict:
    """What a run records of the adapter it merged: its folder and its weights' and config's SHA-256."""
    import hashlib

    adapter = Path(adapter)
    read_adapter_config(adapter)  # an adapter the slicer cannot cut is refused before any run starts
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        path = adapter / name
        if not path.is_file():
            raise InputError(f"--adapter {adapter}: no {name}; pass a folder saved by PEFT's save_pretrained")
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return {"path": str(adapter), "sha256": digest.hexdigest()}


def slice_adapter(adapter: Path, base: Path, config: SliceConfig, out: Path, *, text_only: bool = False,
                  force: bool = False, config_source: str = "config", sliced_model: str | None = None) -> AdapterSlice:
    """Write the slice `config` of the LoRA adapter at `adapter`, trained on checkpoint `base`,
    to the folder `out` (atomically: whole, or not at all)."""
    adapter, base, out = Path(adapter), Path(base), Path(out)
    plan = SlicePlan.build(config, facts_from_checkpoint(base), config_source)
    sliced = cut_adapter(adapter, CheckpointFiles(base), plan, text_only=text_only)
    with staged_output(out, force, inputs=(adapter, base)) as temporary:
        return sliced.write(temporary, sliced_model or str(out))
