"""Architecture facts of a Gemma 3n checkpoint, read from its config.json.

Nothing here is a literal of E4B: layer count, attention pattern, KV producers and
consumers, sparse layers and FFN widths all come from the config, so the same code serves
the released models, the nano model and the tiny test checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from matlab.errors import CheckpointError

MULTIMODAL_TEXT_PREFIX = "model.language_model."
TEXT_ONLY_PREFIX = "model."


def bundled_arch_names() -> list[str]:
    """Names usable with `--arch`, each a config.json shipped inside the package."""
    root = resources.files("matlab") / "data" / "archs"
    return sorted(entry.name for entry in root.iterdir() if (entry / "config.json").is_file())


def kv_sharing_roles(layer_types: list[str], num_kv_shared_layers: int) -> tuple[dict[str, int], list[int]]:
    """KV producers by attention type and the consumer layers, by the rule transformers applies.

    The last `num_kv_shared_layers` layers reuse the KV of the last layer of the same
    attention type before them. Returns ({type: producer layer}, consumer layers); a type
    that occurs among consumers but not before them has no producer and is left out.
    """
    first_shared = len(layer_types) - num_kv_shared_layers
    if num_kv_shared_layers <= 0:
        return {}, []
    producers: dict[str, int] = {}
    for index in range(first_shared):
        producers[layer_types[index]] = index
    return producers, list(range(first_shared, len(layer_types)))


@dataclass(frozen=True)
class ArchFacts:
    """What the slicer and the accounting need to know about a base model."""

    name: str
    config: dict[str, Any]
    text_config: dict[str, Any] = field(repr=False)

    @property
    def is_multimodal(self) -> bool:
        return "text_config" in self.config

    @property
    def text_prefix(self) -> str:
        return MULTIMODAL_TEXT_PREFIX if self.is_multimodal else TEXT_ONLY_PREFIX

    @property
    def num_layers(self) -> int:
        return int(self.text_config["num_hidden_layers"])

    @property
    def layer_types(self) -> list[str]:
        return list(self.text_config["layer_types"])

    @property
    def ffn_widths(self) -> list[int]:
        return list(self.text_config["intermediate_size"])

    @property
    def activation_sparsity(self) -> list[float]:
        return list(self.text_config["activation_sparsity_pattern"])

    @property
    def num_kv_shared_layers(self) -> int:
        return int(self.text_config.get("num_kv_shared_layers", 0))

    @property
    def per_layer_dim(self) -> int:
        return int(self.text_config["hidden_size_per_layer_input"])

    @property
    def hidden_size(self) -> int:
        return int(self.text_config["hidden_size"])

    @property
    def dtype(self) -> str:
        return str(self.config.get("dtype") or self.config.get("torch_dtype") or self.text_config.get("dtype") or "float32")

    @cached_property
    def kv_producers(self) -> dict[str, int]:
        return kv_sharing_roles(self.layer_types, self.num_kv_shared_layers)[0]

    @cached_property
    def kv_consumers(self) -> list[int]:
        return kv_sharing_roles(self.layer_types, self.num_kv_shared_layers)[1]

    @property
    def sparse_layers(self) -> list[int]:
        return [index for index, sparsity in enumerate(self.activation_sparsity) if sparsity > 0.0]

    def trained_widths(self, layer: int) -> tuple[int, ...]:
        """FFN widths the MatFormer was trained at in `layer`: the base width and its half."""
        base = self.ffn_widths[layer]
        return (base, base // 2)


_PER_LAYER_LISTS = ("layer_types", "activation_sparsity_pattern")


def _normalized_text_config(text_config: dict[str, Any], source: str) -> dict[str, Any]:
    """Per-layer fields as explicit lists, with transformers' defaults where they are missing.

    Released configs state `layer_types` and `activation_sparsity_pattern`; then only an
    integer `intermediate_size` needs expanding, and torch is never imported (it alone costs
    the slicer ~0.8 GB of resident memory). Otherwise transformers' config class fills in its
    own defaults.
    """
    if all(isinstance(text_config.get(key), list) for key in _PER_LAYER_LISTS):
        normalized = dict(text_config)
        layers = int(normalized["num_hidden_layers"])
        if not isinstance(normalized.get("intermediate_size"), list):
            normalized["intermediate_size"] = [int(normalized["intermediate_size"])] * layers
        for key in (*_PER_LAYER_LISTS, "intermediate_size"):
            if len(normalized[key]) != layers:
                raise CheckpointError(f"{source}: {key} has {len(normalized[key])} entries but num_hidden_layers "
                                      f"is {layers}; the config is inconsistent")
        return normalized
    from transformers import Gemma3nTextConfig

    fields = {key: value for key, value in text_config.items() if key not in ("model_type", "architectures")}
    try:
        normalized = Gemma3nTextConfig(**fields).to_dict()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: text config is not a valid Gemma 3n config ({error})") from None
    normalized.pop("transformers_version", None)
    return normalized


def facts_from_config(config: dict[str, Any], name: str) -> ArchFacts:
    """Architecture facts of a parsed config.json (multimodal `gemma3n` or `gemma3n_text`)."""
    model_type = config.get("model_type")
    if model_type == "gemma3n":
        text_config = config.get("text_config")
        if not isinstance(text_config, dict):
            raise CheckpointError(f"{name}: config.json has model_type gemma3n but no text_config")
    elif model_type == "gemma3n_text":
        text_config = config
    else:
        raise CheckpointError(
            f"{name}: config.json has model_type {model_type!r}; MatFormer Lab handles Gemma 3n "
            "checkpoints ('gemma3n' or 'gemma3n_text')"
        )
    return ArchFacts(name=name, config=config, text_config=_normalized_text_config(text_config, name))


def read_config_json(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no config.json; pass a Gemma 3n checkpoint directory") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def facts_from_checkpoint(directory: str | Path) -> ArchFacts:
    directory = Path(directory)
    return facts_from_config(read_config_json(directory), str(directory))


def facts_from_arch(name: str) -> ArchFacts:
    """Facts of a bundled architecture such as `gemma-3n-e4b`."""
    names = bundled_arch_names()
    if name not in names:
        raise CheckpointError(f"unknown architecture {name!r}; choose one of: {', '.join(names)}")
    text = (resources.files("matlab") / "data" / "archs" / name / "config.json").read_text(encoding="utf-8")
    return facts_from_config(json.loads(text), name)
