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
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matlab.arch.facts import facts_from_checkpoint
from matlab.errors import InputError, shown_value
from matlab.io.reader import CheckpointFiles
from matlab.io.staging import staged_output
from matlab.plan import SlicePlan, TensorSpec
from matlab.slice_config import SliceConfig

if TYPE_CHECKING:  # torch is imported where an adapter is cut: slicing without one never loads it
    import torch

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # PEFT writes about a kilobyte
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


def _adapter_config_data(adapter: Path) -> dict:
    """The adapter's config as a JSON object, read in bounded memory: a PEFT adapter_config.json
    is about a kilobyte, and PEFT would read (and copy into the output) any size, any depth."""
    path = adapter / ADAPTER_CONFIG
    if not path.is_file():
        raise InputError(f"--adapter {adapter}: no {ADAPTER_CONFIG}; pass a folder saved by PEFT's save_pretrained")
    with path.open("rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)  # a device or a huge file is not read to its end
    if len(data) > MAX_CONFIG_BYTES:
        raise InputError(f"{path}: larger than {MAX_CONFIG_BYTES >> 10} KiB, so not an adapter config (PEFT writes "
                         "about one KiB); pass the folder PEFT's save_pretrained wrote")
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(f"{path}: not JSON that can be read (nested too deep, or not UTF-8 JSON); pass the folder "
                         "PEFT's save_pretrained wrote") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: holds {shown_value(config)}, not a JSON object; pass the folder PEFT's "
                         "save_pretrained wrote")
    return config


def _check_numbers(path: Path, config: dict) -> None:
    """The rank a whole number of at least 1 and alpha a finite number (PEFT accepts 0, strings
    and NaN here and fails later, or merges NaN)."""
    rank = config.get("r", 8)  # PEFT's default
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"{path}: 'r' is {shown_value(rank)}: the LoRA rank must be a whole number of at least 1, "
                         "the rank of its lora_A and lora_B tensors")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise InputError(f"{path}: 'lora_alpha' is {shown_value(alpha)}: it must be a finite number")
    targets = config.get("target_modules")
    if not (targets is None or isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(target, str) for target in targets))):
        raise InputError(f"{path}: 'target_modules' is {shown_value(targets)}: give a list of module names or one "
                         "regular expression")


def read_adapter_config(adapter: Path):
    """The adapter's LoraConfig, parsed by PEFT after its numbers are checked; InputError naming
    the field that is wrong or that cannot be cut."""
    from peft import LoraConfig, PeftConfig

    path = adapter / ADAPTER_CONFIG
    data = _adapter_config_data(adapter)
    _check_numbers(path, data)
    try:
        config = PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**data))
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InputError(f"{path}: PEFT cannot read it ({shown_value(str(error))})") from error
    if not isinstance(config, LoraConfig):
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise InputError(f"{path}: peft_type {kind}: only LoRA adapters can be sliced")
    for name, default, why in UNCUTTABLE:
        value = getattr(config, name, default)
        if value not in (default, None, {}, [], False):
            raise InputError(f"{path}: {name} is {shown_value(value)}: this adapter cannot be sliced "
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


def _targeted(module: str, targets) -> bool:
    """Whether PEFT's `target_modules` selects `module` (a list: the name or its last parts; a
    string: a regular expression over the whole name)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == target or module.endswith("." + target) for target in targets)


def _check_targets(adapter: Path, config, base: CheckpointFiles) -> None:
    """Every module `target_modules` names exists in the base (PEFT refuses to load an adapter
    whose targets are missing, after slicing has written it)."""
    targets = config.target_modules
    if targets is None:
        return
    modules = [name.removesuffix(".weight") for name, info in base.tensors.items()
               if name.endswith(".weight") and len(info.shape) == 2]
    try:
        missing = [target for target in ([targets] if isinstance(targets, str) else sorted(targets))
                   if not any(_targeted(module, [target] if not isinstance(targets, str) else target)
                              for module in modules)]
    except re.error as error:
        raise InputError(f"{adapter / ADAPTER_CONFIG}: target_modules {shown_value(targets)} is not a regular "
                         f"expression ({error})") from None
    if missing:
        raise InputError(f"{adapter / ADAPTER_CONFIG}: target_modules names {', '.join(map(repr, missing[:4]))}, "
                         f"which no linear module of the base checkpoint {base.directory} is: an adapter for "
                         "another base model?")


def _check_pair_shapes(weights: Path, key: str, base_name: str, base_shape: tuple[int, ...], shape: tuple[int, ...],
                       suffix: str, rank: int) -> None:
    """A LoRA tensor's shape against the weight it adapts and the config's rank, read from the
    file's header before the tensor is."""
    if len(base_shape) != 2 or len(shape) != 2:
        raise InputError(f"{weights}: {key} adapts {base_name}, which the base checkpoint has no 2-D weight of: an "
                         "adapter for another base model?")
    side = 1 if suffix == ".lora_A.weight" else 0  # A (r, in) meets W's columns, B (out, r) its rows
    if shape[side] != base_shape[side]:
        raise InputError(f"{weights}: {key} has shape {list(shape)}, which does not fit {base_name} "
                         f"{list(base_shape)} of the base: an adapter for another base model?")
    if rank > min(base_shape):
        raise InputError(f"{weights.parent / ADAPTER_CONFIG}: 'r' is {rank}, above the dimensions of {base_name} "
                         f"{list(base_shape)}: a LoRA rank is at most the smaller of a layer's dimensions")
    if shape[1 - side] != rank:
        raise InputError(f"{weights}: {key} has rank {shape[1 - side]} but {ADAPTER_CONFIG} says 'r' is {rank}: the "
                         "config and the tensors disagree; save the adapter again with PEFT's save_pretrained")


def plan_adapter_tensors(adapter: Path, base: CheckpointFiles, plan: SlicePlan, text_only: bool, rank: int,
                         ) -> tuple[dict[str, torch.Tensor], int]:
    """The sliced adapter's tensors (PEFT names of the sliced model) and how many were dropped,
    checked against the base and the config before PEFT sees them: every LoRA pair complete,
    on a 2-D weight of the base of matching size, of the config's rank, and finite."""
    import torch
    from safetensors import SafetensorError, safe_open

    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        found = "adapter_model.bin: save it with safe_serialization=True" if (adapter / "adapter_model.bin").is_file() \
            else "no weights"
        raise InputError(f"--adapter {adapter}: no {ADAPTER_WEIGHTS} ({found})")
    sliced, dropped, halves = {}, 0, {}
    try:
        with safe_open(weights, "pt") as file:
            for key in sorted(file.keys()):
                base_name, suffix = _base_module(key, adapter)
                info = base.tensors.get(base_name)
                shape = tuple(file.get_slice(key).get_shape())
                _check_pair_shapes(weights, key, base_name, tuple(info.shape) if info else (), shape, suffix, rank)
                halves.setdefault(base_name, set()).add(suffix)
                tensor = file.get_tensor(key)
                if not torch.isfinite(tensor).all():
                    raise InputError(f"{weights}: {key} holds values that are not finite (NaN or inf): the training "
                                     "that made it diverged; use an earlier checkpoint of the adapter")
                spec = plan.tensor_spec(base_name, info.shape, text_only=text_only)
                if spec is None:
                    dropped += 1
                    continue
                lora = lora_tensor_spec(spec, key, PEFT_PREFIX + spec.target.removesuffix(".weight") + suffix,
                                        tuple(tensor.shape), suffix)
                sliced[lora.target] = cut_tensor(tensor, lora).contiguous()
    except SafetensorError as error:
        raise InputError(f"{weights}: not a valid safetensors file ({error})") from error
    for base_name, found in sorted(halves.items()):
        for suffix in set(LORA_SUFFIXES) - found:
            raise InputError(f"{weights}: {base_name.removesuffix('.weight')} has no {suffix.strip('.')} beside its "
                             f"{(set(LORA_SUFFIXES) - {suffix}).pop().strip('.')}: every LoRA pair needs both; save "
                             "the adapter again with PEFT's save_pretrained")
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
    _check_targets(adapter, config, base)
    tensors, dropped = plan_adapter_tensors(adapter, base, plan, text_only, int(config.r))
    return SlicedAdapter(config, tensors, dropped)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT's and transformers' warnings that carry nothing for a user of this tool, silenced
    where PEFT is called: PEFT reading a deprecated transformers attribute, and its note that
    the adapter's recorded base path differs from the in-memory model's (which has none)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"The PEFT config's `base_model_name_or_path` was renamed",
                                category=UserWarning)
        yield


def adapter_identity(adapter: Path, checkpoint: Path) -> dict:
    """What a run records of the adapter it merged: its folder and its weights' and config's
    SHA-256. The adapter is checked whole against `checkpoint` first (it is small), so that one
    that cannot be merged is refused before the run writes anything."""
    import hashlib

    adapter = Path(adapter)
    facts = facts_from_checkpoint(checkpoint)
    cut_adapter(adapter, CheckpointFiles(checkpoint), SlicePlan.identity(facts), text_only=True)
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
