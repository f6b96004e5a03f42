"""Tensor inventories: every stored tensor's name, shape and dtype, without reading weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from matlab.arch.facts import ArchFacts, bundled_arch_directory, bundled_arch_names, read_config_json
from matlab.io.reader import CheckpointFiles
from matlab.util.dtypes import TORCH_TO_SAFETENSORS, torch_name

INVENTORY_NAME = "inventory.json"  # beside a bundled architecture's config.json


@dataclass(frozen=True)
class StoredTensor:
    shape: tuple[int, ...]
    dtype: str


Inventory = dict[str, StoredTensor]


def inventory_from_checkpoint(directory: str | Path) -> Inventory:
    """Names, shapes and dtypes from the safetensors headers of a checkpoint directory."""
    files = CheckpointFiles(directory)
    return {name: StoredTensor(info.shape, info.dtype) for name, info in files.tensors.items()}


def _meta_model(facts: ArchFacts, text_only: bool):
    """transformers' model of the architecture on the meta device (no memory, no weights), and
    the prefix its text tensors carry. A text-only build needs no vision dependencies."""
    import torch

    with torch.device("meta"):
        if facts.is_multimodal and not text_only:
            return facts.family.multimodal_model(facts.config), facts.text_prefix
        return facts.family.text_model(facts.text_config), facts.family.text_prefix


def built_inventory(facts: ArchFacts, text_only: bool = False) -> Inventory:
    """The tensors a released checkpoint of this architecture stores, from transformers' own
    model classes, plus those the release stores that transformers does not allocate. With
    `text_only`, only the text model (named as in `facts`' layout)."""
    model, built_prefix = _meta_model(facts, text_only)
    dtype = TORCH_TO_SAFETENSORS.get(facts.dtype, "F32")
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if facts.text_config.get("tie_word_embeddings", True) \
        else set()
    inventory = {}
    for name, tensor in model.state_dict().items():  # parameters and persistent buffers, as saved
        if name in tied:
            continue
        if name.startswith(built_prefix) and built_prefix != facts.text_prefix:
            name = facts.text_prefix + name[len(built_prefix):]
        stored_dtype = dtype if tensor.is_floating_point() else TORCH_TO_SAFETENSORS[torch_name(tensor.dtype)]
        inventory[name] = StoredTensor(tuple(tensor.shape), stored_dtype)
    stored_only = facts.family.stored_unallocated(facts.text_config, facts.text_prefix, facts.kv_consumers)
    for name, shape in stored_only.items():
        inventory.setdefault(name, StoredTensor(shape, dtype))
    return inventory


def write_bundled_inventory(facts: ArchFacts, directory: Path) -> Path:
    """Record `built_inventory(facts)` beside a bundled architecture's config.json."""
    tensors = {name: [stored.dtype, list(stored.shape)] for name, stored in sorted(built_inventory(facts).items())}
    path = directory / INVENTORY_NAME
    path.write_text(json.dumps({"tensors": tensors}, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def inventory_from_facts(facts: ArchFacts, text_only: bool = False) -> Inventory:
    """The stored tensors of an architecture. A bundled architecture (`--arch`) carries its
    inventory as data, so counting it needs neither transformers nor the vision tower's timm."""
    if facts.name in bundled_arch_names():
        directory = bundled_arch_directory(facts.name)
        path = directory / INVENTORY_NAME
        if path.is_file() and read_config_json(directory) == facts.config:
            tensors = json.loads(path.read_text(encoding="utf-8"))["tensors"]
            return {name: StoredTensor(tuple(shape), dtype) for name, (dtype, shape) in tensors.items()}
    return built_inventory(facts, text_only)
