"""The interface every nested-architecture family implements, and the family registry.

A family is everything the workbench knows about one MatFormer architecture: which config
keys hold the per-layer facts, the tensor names and the axis each FFN tensor is cut on, the
tables that hold one block per layer, the KV-sharing rule, the text-only rewrite, the trained
granularities and the transformers classes that run it. Slicing, validation, accounting and
the inference core ask the family and never name a tensor themselves, so supporting another
architecture is one new module: subclass `Family`, set its names, register an instance.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, NoReturn

from matlab.errors import CheckpointError, shown_value

# No architecture has more layers than this; a larger count is a corrupt config.json, refused
# before any per-layer list is built from it.
MAX_LAYERS = 100_000



def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer_range(minimum: int, maximum: int | None) -> str:
    if maximum is None:
        return "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return f"an integer from {minimum:,} to {maximum:,}"


class ConfigFields:
    """Reads the fields of one parsed text config for `Family.check_fields`: each read checks
    the value and raises CheckpointError naming the file, the field and the fix. With
    `present_only`, a field the config leaves out is not required (transformers fills it in)."""

    def __init__(self, config: dict[str, Any], source: str, layers_key: str, key_prefix: str = "",
                 present_only: bool = False):
        self.config, self.source, self.layers_key = config, source, layers_key
        self.key_prefix, self.present_only = key_prefix, present_only

    def fail(self, field: str, problem: str) -> NoReturn:
        raise CheckpointError(f"{self.source}: {self.key_prefix}{field} {problem}; fix or re-download config.json")

    def _read(self, key: str) -> Any:
        if key not in self.config:
            self.fail(key, "is missing")
        return self.config[key]

    def integer(self, key: str, minimum: int = 1, maximum: int | None = None, default: int | None = None) -> int | None:
        """An integer from `minimum` to `maximum`; `default` (or None with `present_only`) when absent."""
        if key not in self.config and (default is not None or self.present_only):
            return default
        value = self._read(key)
        if not _is_integer(value) or value < minimum or (maximum is not None and value > maximum):
            self.fail(key, f"is {shown_value(value)}, not {_integer_range(minimum, maximum)}")
        return value

    def per_layer(self, key: str, layers: int | None, entry_ok: Callable[[Any], bool], entry: str,
                  scalar_ok: bool = False) -> list[Any] | None:
        """A list of one `entry` per layer (with `scalar_ok`, one entry for every layer stands
        too). Returns the list; None for a scalar, or for an absent or null field with `present_only`."""
        if self.present_only and self.config.get(key) is None:
            return None
        value = self._read(key)
        if scalar_ok and not isinstance(value, list):
            if not entry_ok(value):
                self.fail(key, f"is {shown_value(value)}, not {entry} or a list of them, one per layer")
            return None
        if not isinstance(value, list):
            self.fail(key, f"is {shown_value(value)}, not a list of one entry per layer (each {entry})")
        for index, item in enumerate(value):
            if not entry_ok(item):
                self.fail(f"{key}[{index}]", f"is {shown_value(item)}, not {entry}")
        if layers is not None and len(value) != layers:
            self.fail(key, f"has {len(value):,} entries but {self.key_prefix}{self.layers_key} is {layers:,}")
        return value


class Family:
    """A nested architecture. Tensor names below are relative to the text model's prefix."""

    name = "family"
    text_model_type = ""                   # config.json model_type of a text-only checkpoint
    multimodal_model_type: str | None = None  # ... of a multimodal checkpoint (text config nested)
    text_config_key = "text_config"
    text_prefix = "model."                  # text tensors of a text-only checkpoint
    multimodal_text_prefix = "model.language_model."
    head_prefix = "lm_head."
    layer_tensor = re.compile(r"layers\.(\d+)\.(.+)")
    # Text config keys.
    num_layers_key = "num_hidden_layers"
    ffn_widths_key = "intermediate_size"
    layer_types_key = "layer_types"
    num_kv_shared_key = "num_kv_shared_layers"
    block_size_key = ""                      # width of one layer's block in the layer-blocked tables
    attention_types: tuple[str, ...] = ()    # the layer_types entries the family runs (empty: any name)
    # Per-layer tensor suffix -> the axis cut to the kept FFN width (MatFormer nesting keeps
    # the first k neurons).
    ffn_cuts: dict[str, int] = {}
    # Text tensor -> the axis that holds one block of `block_size_key` per layer.
    layer_blocks: dict[str, int] = {}
    # Text tensor prefixes not counted as effective parameters, by accounting group.
    embedding_groups: dict[str, str] = {}
    # The per-layer embedding table (kept on the CPU by `ple_on_cpu`, reported as PLE bytes).
    ple_table = ""
    # Groups of the non-text tensors of a multimodal checkpoint, by full-name prefix.
    component_groups: dict[str, tuple[str, ...]] = {}
    # GGUF storage (`matlab.plan.tensor_formats`): per-layer tensor suffixes of the attention block
    # (a layer's `attention` format); 2-D tensors llama.cpp's converter stores in F32 whatever
    # the file's type (per-layer ones by suffix); tables its loader sizes by `vocab_size_key`,
    # which the converter pads with zero rows to that size.
    attention_tensors: tuple[str, ...] = ()
    gguf_float32_tensors: tuple[str, ...] = ()
    gguf_vocab_tables: tuple[str, ...] = ()
    # llama.cpp's quantization categories (`matlab.formats.presets`) of the layer and model
    # tensors by their names here; any other 2-D tensor is "other", and one whose name holds a
    # part of `gguf_kept_tensors` is never quantized by llama-quantize ("kept").
    gguf_categories: dict[str, str] = {}
    gguf_kept_tensors: tuple[str, ...] = ()
    vocab_size_key = "vocab_size"
    text_model_class_name = ""
    multimodal_model_class_name = ""

    @property
    def ple_module(self) -> str:
        """The per-layer embedding module's path in the text model."""
        return self.text_prefix + self.ple_table.removesuffix(".weight")

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(t for t in (self.text_model_type, self.multimodal_model_type) if t)

    # -- config ---------------------------------------------------------------------------
    def split_config(self, config: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
        """(the text config, whether the checkpoint is multimodal) of a parsed config.json."""
        if config.get("model_type") == self.multimodal_model_type:
            text_config = config.get(self.text_config_key)
            if not isinstance(text_config, dict):
                stated = "missing" if text_config is None else f"{shown_value(text_config)}, not an object"
                raise CheckpointError(f"{source}: model_type is {self.multimodal_model_type} but "
                                      f"{self.text_config_key} is {stated}; fix or re-download config.json")
            return text_config, True
        return config, False

    def normalize_text_config(self, text_config: dict[str, Any], source: str, key_prefix: str = "") -> dict[str, Any]:
        """Per-layer fields as explicit lists of one entry per layer (a scalar FFN width is
        expanded), after `check_text_config`. `key_prefix` names the text config in messages
        (`text_config.` in a multimodal config.json)."""
        self.check_text_config(text_config, source, key_prefix)
        normalized = dict(text_config)
        if not isinstance(normalized[self.ffn_widths_key], list):
            normalized[self.ffn_widths_key] = [normalized[self.ffn_widths_key]] * normalized[self.num_layers_key]
        return normalized

    def check_text_config(self, text_config: dict[str, Any], source: str, key_prefix: str = "",
                          present_only: bool = False) -> None:
        """Raise CheckpointError naming the first field the workbench cannot use (wrong type,
        missing, out of range, a per-layer list of the wrong length). Every fact the family
        reads from a config is checked here, once, so nothing downstream meets a bad value.
        With `present_only`, fields the config leaves out are not required."""
        self.check_fields(ConfigFields(text_config, source, self.num_layers_key, key_prefix, present_only))

    def check_fields(self, fields: ConfigFields) -> int | None:
        """The checks of `check_text_config`; a family adds its own fields. Returns the layer
        count (None when `present_only` and the config leaves it out)."""
        layers = fields.integer(self.num_layers_key, maximum=MAX_LAYERS)
        per_layer = {key: fields.per_layer(key, layers, *self.layer_entry(key), scalar_ok=key == self.ffn_widths_key)
                     for key in self.per_layer_keys()}
        shared = fields.integer(self.num_kv_shared_key, minimum=0, default=0,
                                maximum=None if layers is None else layers - 1)
        for key in self.size_keys():
            fields.integer(key)
        layer_types = per_layer.get(self.layer_types_key)
        if layer_types is not None and shared:
            producers, consumers = self.kv_roles(layer_types, shared)
            orphaned = sorted({layer_types[layer] for layer in consumers} - set(producers))
            if orphaned:
                fields.fail(self.num_kv_shared_key, f"is {shared}, but no {orphaned[0]} layer comes before the last "
                                                    f"{shared} layers to produce their KV")
        return layers

    def layer_entry(self, key: str) -> tuple[Callable[[Any], bool], str]:
        """What one entry of the per-layer field `key` must be: a test and its description."""
        if key == self.ffn_widths_key:
            return (lambda width: _is_integer(width) and width > 0), "a positive integer"
        if key == self.layer_types_key and self.attention_types:
            return (lambda kind: kind in self.attention_types), f"one of {', '.join(self.attention_types)}"
        if key == self.layer_types_key:
            return (lambda kind: isinstance(kind, str) and bool(kind)), "an attention type name"
        return (lambda entry: True), "an entry"

    def size_keys(self) -> tuple[str, ...]:
        """Text config keys that must hold a positive integer."""
        return (self.block_size_key,) if self.block_size_key else ()

    def per_layer_keys(self) -> tuple[str, ...]:
        """Text config keys that must hold one entry per layer."""
        return (self.ffn_widths_key, self.layer_types_key)

    def kv_roles(self, layer_types: list[str], num_kv_shared: int) -> tuple[dict[str, int], list[int]]:
        """KV producers by attention type and the consumer layers.

        The last `num_kv_shared` layers reuse the KV of the last layer of the same attention
        type before them; a type that occurs among consumers but not before them has no
        producer and is left out.
        """
        if num_kv_shared <= 0:
            return {}, []
        first_shared = len(layer_types) - num_kv_shared
        producers: dict[str, int] = {}
        for index in range(first_shared):
            producers[layer_types[index]] = index
        return producers, list(range(first_shared, len(layer_types)))

    def trained_widths(self, base_width: int) -> tuple[int, ...]:
        """FFN widths the MatFormer was trained at for a layer of `base_width`."""
        return (base_width, base_width // 2)

    def sliced_text_config(self, raw: dict[str, Any], normalized: dict[str, Any], kept_layers: tuple[int, ...],
                           ffn_widths: tuple[int, ...], num_kv_shared: int) -> dict[str, Any]:
        """The submodel's text config: every per-layer list cut to the kept layers, the counts
        rewritten. Any list as long as the layer count is treated as per-layer."""
        layers = int(normalized[self.num_layers_key])
        text_config = copy.deepcopy(raw)
        for key, value in normalized.items():
            if isinstance(value, list) and len(value) == layers:
                text_config[key] = [value[layer] for layer in kept_layers]
        text_config.update({self.num_layers_key: len(kept_layers), self.ffn_widths_key: list(ffn_widths),
                            self.num_kv_shared_key: num_kv_shared})
        return text_config

    def gguf_category(self, relative: str) -> str:
        """llama.cpp's category of a text tensor (a layer tensor by its suffix)."""
        if any(part in relative for part in self.gguf_kept_tensors):
            return "kept"
        return self.gguf_categories.get(relative, "other")

    def sparse_layers(self, text_config: dict[str, Any]) -> list[int]:
        """Layers with activation sparsity, which some runtimes build differently (none by default)."""
        return []

    def text_only_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config.json of the text model alone. The dtype of a multimodal checkpoint is
        stated at its top level; the text-only config states it too."""
        text_config, multimodal = self.split_config(config, "config")
        if not multimodal:
            return copy.deepcopy(config)
        text_config = {**copy.deepcopy(text_config), "model_type": self.text_model_type,
                       "architectures": [self.text_model_class_name]}
        dtype = config.get("dtype") or config.get("torch_dtype")
        if dtype and not text_config.get("dtype"):
            text_config["dtype"] = dtype
        return text_config

    # -- tensors --------------------------------------------------------------------------
    def text_prefix_of(self, multimodal: bool) -> str:
        return self.multimodal_text_prefix if multimodal else self.text_prefix

    def text_relative(self, name: str, multimodal: bool) -> str | None:
        """A text tensor's name relative to the text model, or None for other tensors."""
        prefix = self.text_prefix_of(multimodal)
        return name[len(prefix):] if name.startswith(prefix) else None

    def text_only_name(self, name: str, multimodal: bool) -> str | None:
        """The name of a text tensor (or the LM head) in a text-only checkpoint; None for the rest."""
        if name.startswith(self.head_prefix):
            return name
        relative = self.text_relative(name, multimodal)
        return None if relative is None else self.text_prefix + relative

    def group(self, name: str, multimodal: bool) -> str:
        """Accounting group of a stored tensor: one of `embedding_groups`' values, 'text_other'
        (effective parameters), a component group or 'other'."""
        relative = self.text_relative(name, multimodal)
        if relative is None and name.startswith(self.head_prefix):
            relative = name
        if relative is not None:
            for prefix, group in self.embedding_groups.items():
                if relative.startswith(prefix):
                    return group
            return "text_other"
        for group, prefixes in self.component_groups.items():
            if name.startswith(prefixes):
                return group
        return "other"

    def stored_unallocated(self, text_config: dict[str, Any], prefix: str,
                           kv_consumers: list[int]) -> dict[str, tuple[int, ...]]:
        """Tensors released checkpoints store that the transformers model does not allocate."""
        return {}

    # -- transformers ---------------------------------------------------------------------
    def text_model(self, text_config: dict[str, Any]):
        """transformers' causal LM for a (normalized) text config, built in the current device
        context (callers use the meta device)."""
        raise NotImplementedError(f"the {self.name} family has no transformers text model")

    def multimodal_model(self, config: dict[str, Any]):
        raise NotImplementedError(f"the {self.name} family has no transformers multimodal model")

    def init_buffers(self, model, module) -> None:
        """Fill the non-persistent buffers of `module` (RoPE tables and the like)."""


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make `family` known by each of its model types (a later registration replaces one)."""
    for model_type in family.model_types:
        _FAMILIES[model_type] = family
    return family


def unregister_family(family: Family) -> None:
    for model_type in family.model_types:
        if _FAMILIES.get(model_type) is family:
            del _FAMILIES[model_type]


def family_for_config(config: dict[str, Any], source: str) -> Family:
    """The family of a parsed config.json, chosen by its model_type."""
    model_type = config.get("model_type")
    family = _FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        known = ", ".join(f"'{name}'" for name in sorted(_FAMILIES))
        stated = "is missing" if model_type is None else shown_value(model_type)
        raise CheckpointError(f"{source}: model_type {stated}; MatFormer Lab handles model types {known}")
    return family
