"""Architecture facts of a checkpoint, read from its config.json through its family.

Nothing here is a literal of E4B: layer count, attention pattern, KV producers and
consumers, FFN widths and tensor names all come from the config and its family
(`matlab.families`), so the same code serves the released models, the nano model and the
tiny test checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from matlab.errors import CheckpointError
from matlab.families import Family, family_for_config

MAX_CONFIG_BYTES = 16 << 20  # a released config.json is a few KB


def bundled_arch_names() -> list[str]:
    """Names usable with `--arch`, each a config.json shipped inside the package."""
    root = resources.files("matlab") / "data" / "archs"
    return sorted(entry.name for entry in root.iterdir() if (entry / "config.json").is_file())


SLIDING_ATTENTION, FULL_ATTENTION = "sliding_attention", "full_attention"  # entries of `layer_types`


@dataclass(frozen=True)
class ArchFacts:
    """What the slicer, the accounting and the core need to know about a base model."""

    name: str
    config: dict[str, Any] = field(repr=False)
    text_config: dict[str, Any] = field(repr=False)  # normalized: per-layer fields as lists
    family: Family
    is_multimodal: bool

    @property
    def text_prefix(self) -> str:
        return self.family.text_prefix_of(self.is_multimodal)

    @property
    def num_layers(self) -> int:
        return int(self.text_config[self.family.num_layers_key])

    @property
    def layer_types(self) -> list[str]:
        return list(self.text_config[self.family.layer_types_key])

    @property
    def ffn_widths(self) -> list[int]:
        return list(self.text_config[self.family.ffn_widths_key])

    @property
    def num_kv_shared_layers(self) -> int:
        return int(self.text_config.get(self.family.num_kv_shared_key, 0))

    @property
    def block_size(self) -> int:
        """Width of one layer's block in the layer-blocked tables (Gemma 3n's PLE)."""
        return int(self.text_config[self.family.block_size_key])

    @property
    def dtype(self) -> str:
        return str(self.config.get("dtype") or self.config.get("torch_dtype") or self.text_config.get("dtype")
                   or "float32")

    @cached_property
    def kv_producers(self) -> dict[str, int]:
        return self.family.kv_roles(self.layer_types, self.num_kv_shared_layers)[0]

    @cached_property
    def kv_consumers(self) -> list[int]:
        return self.family.kv_roles(self.layer_types, self.num_kv_shared_layers)[1]

    @property
    def sparse_layers(self) -> list[int]:
        """Layers with activation sparsity (the family's rule; none for most families)."""
        return self.family.sparse_layers(self.text_config)

    @property
    def first_shared_layer(self) -> int:
        """The first KV-shared layer (the layer count when none shares)."""
        return self.kv_consumers[0] if self.kv_consumers else self.num_layers

    @property
    def attention_period(self) -> int:
        """The sliding/full attention period: from one full-attention layer to the next."""
        full = [layer for layer, kind in enumerate(self.layer_types) if kind == FULL_ATTENTION]
        return full[1] - full[0] if len(full) > 1 else self.num_layers

    def trained_widths(self, layer: int) -> tuple[int, ...]:
        """FFN widths the MatFormer was trained at in `layer`."""
        return self.family.trained_widths(self.ffn_widths[layer])

    def text_only(self) -> ArchFacts:
        """The facts of the text model alone, in the text-only layout."""
        if not self.is_multimodal:
            return self
        return facts_from_config(self.family.text_only_config(self.config), self.name)


def facts_from_config(config: dict[str, Any], name: str, source: str | None = None) -> ArchFacts:
    """Architecture facts of a parsed config.json, in either layout of its family; every fact
    is checked first (CheckpointError naming `source`, default `name`, and the field)."""
    source = source or name
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: holds {_json_kind(config)}, not a JSON object; fix or re-download "
                              "config.json")
    family = family_for_config(config, source)
    text_config, multimodal = family.split_config(config, source)
    key_prefix = f"{family.text_config_key}." if multimodal else ""
    return ArchFacts(name, config, family.normalize_text_config(text_config, source, key_prefix), family, multimodal)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "a JSON list", str: "a JSON string", bool: "a JSON boolean"}.get(type(value), "a JSON number")


def read_config_json(directory: Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory; CheckpointError, one line naming the
    file, when it is missing, unreadable, too large, not UTF-8, not JSON or not a JSON object."""
    path = directory / "config.json"
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # a device or a huge file is not read to its end
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no config.json; pass a checkpoint directory") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror}); fix or re-download config.json") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB, so not a model config; fix or "
                              "re-download config.json")
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {error.start:,} is {data[error.start]:#04x}); "
                              "fix or re-download config.json") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a model config; fix or re-download "
                              "config.json") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); fix or re-download config.json") from None
    except ValueError:  # int() of a literal thousands of digits long
        raise CheckpointError(f"{path}: holds an integer thousands of digits long; fix or re-download "
                              "config.json") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds {_json_kind(config)}, not a JSON object; fix or re-download config.json")
    return config


def facts_from_checkpoint(directory: str | Path) -> ArchFacts:
    directory = Path(directory)
    return facts_from_config(read_config_json(directory), str(directory), str(directory / "config.json"))


def bundled_arch_directory(name: str) -> Path:
    names = bundled_arch_names()
    if name not in names:
        raise CheckpointError(f"unknown architecture {name!r}; choose one of: {', '.join(names)}")
    return Path(str(resources.files("matlab") / "data" / "archs" / name))


def facts_from_arch(name: str) -> ArchFacts:
    """Facts of a bundled architecture such as `gemma-3n-e4b`."""
    return facts_from_config(read_config_json(bundled_arch_directory(name)), name)
