"""A validated slice: kept layers, their widths, the rewritten config and per-tensor selections."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from matlab.architecture import ArchFacts, TEXT_ONLY_PREFIX
from matlab.errors import CheckpointError
from matlab.slice_config import SliceConfig
from matlab.validation import Problem, require_valid

# Per-layer config fields rewritten explicitly; any other list field as long as the layer
# count is treated as per-layer too and subset to the kept layers.
_REWRITTEN_FIELDS = ("num_hidden_layers", "intermediate_size", "layer_types", "num_kv_shared_layers",
                     "activation_sparsity_pattern")
_LAYER_TENSOR = re.compile(r"layers\.(\d+)\.(.+)")

Ranges = tuple[tuple[int, int], ...]


def merge_ranges(ranges) -> Ranges:
    """Join touching [start, stop) ranges: fewer, longer copies and views where possible."""
    merged: list[list[int]] = []
    for start, stop in ranges:
        if merged and merged[-1][1] == start:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return tuple((start, stop) for start, stop in merged)


@dataclass(frozen=True)
class TensorSpec:
    """How one output tensor is cut from one source tensor: kept row and column ranges."""

    source: str
    target: str
    source_shape: tuple[int, ...]
    rows: Ranges | None = None
    cols: Ranges | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.source_shape)
        if self.rows is not None:
            shape[0] = sum(stop - start for start, stop in self.rows)
        if self.cols is not None:
            shape[1] = sum(stop - start for start, stop in self.cols)
        return tuple(shape)

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass(frozen=True)
class SlicePlan:
    """A slice config resolved against a base architecture (validated on construction)."""

    facts: ArchFacts
    config: SliceConfig
    kept_layers: tuple[int, ...]
    ffn_widths: tuple[int, ...]
    warnings: tuple[Problem, ...] = ()

    @classmethod
    def build(cls, config: SliceConfig, facts: ArchFacts, source: str = "config") -> "SlicePlan":
        warnings = require_valid(config, facts, source)
        skipped = set(config.layers_skipped)
        kept = tuple(layer for layer in range(facts.num_layers) if layer not in skipped)
        return cls(facts, config, kept, tuple(config.widths_for(len(kept))), tuple(warnings))

    @classmethod
    def identity(cls, facts: ArchFacts) -> "SlicePlan":
        config = SliceConfig(name="full", ffn_widths=tuple(facts.ffn_widths))
        return cls(facts, config, tuple(range(facts.num_layers)), tuple(facts.ffn_widths))

    @cached_property
    def new_index(self) -> dict[int, int]:
        return {layer: position for position, layer in enumerate(self.kept_layers)}

    @property
    def num_kv_shared_layers(self) -> int:
        consumers = set(self.facts.kv_consumers)
        return sum(1 for layer in self.kept_layers if layer in consumers)

    def sliced_text_config(self) -> dict[str, Any]:
        """The text config of the submodel: every per-layer field rewritten consistently."""
        facts = self.facts
        text_config = copy.deepcopy(facts.config["text_config"] if facts.is_multimodal else facts.config)
        for key, value in facts.text_config.items():
            if key not in _REWRITTEN_FIELDS and isinstance(value, list) and len(value) == facts.num_layers:
                text_config[key] = [value[layer] for layer in self.kept_layers]
        text_config.update(
            num_hidden_layers=len(self.kept_layers),
            intermediate_size=list(self.ffn_widths),
            layer_types=[facts.layer_types[layer] for layer in self.kept_layers],
            num_kv_shared_layers=self.num_kv_shared_layers,
            activation_sparsity_pattern=[facts.activation_sparsity[layer] for layer in self.kept_layers],
        )
        return text_config

    def facts_for_submodel(self) -> ArchFacts:
        """Architecture facts of the text model this plan produces."""
        from matlab.architecture import facts_from_config

        return facts_from_config({**self.sliced_text_config(), "model_type": "gemma3n_text"},
                                 f"{self.facts.name}[{self.config.name}]")

    def sliced_config(self, text_only: bool) -> dict[str, Any]:
        """The whole config.json of the output checkpoint."""
        text_config = self.sliced_text_config()
        if not self.facts.is_multimodal:
            return text_config
        if text_only:
            dtype = self.facts.config.get("dtype") or self.facts.config.get("torch_dtype")
            text_config.update(model_type="gemma3n_text", architectures=["Gemma3nForCausalLM"])
            if dtype and not text_config.get("dtype"):
                text_config["dtype"] = dtype
            return text_config
        config = copy.deepcopy(self.facts.config)
        config["text_config"] = text_config
        return config

    def tensor_spec(self, name: str, shape: tuple[int, ...], text_only: bool = False) -> TensorSpec | None:
        """How to produce the output tensor for source tensor `name`, or None to drop it."""
        prefix = self.facts.text_prefix
        out_prefix = TEXT_ONLY_PREFIX if text_only else prefix
        if not name.startswith(prefix):
            is_text_head = name.startswith("lm_head.")
            return TensorSpec(name, name, shape) if (is_text_head or not text_only) else None
        relative = name[len(prefix):]
        match = _LAYER_TENSOR.fullmatch(relative)
        if match:
            return self._layer_tensor_spec(name, shape, int(match.group(1)), match.group(2), out_prefix)
        target = out_prefix + relative
        block = self.facts.per_layer_dim
        blocks = merge_ranges((layer * block, (layer + 1) * block) for layer in self.kept_layers)
        expected_ple = self.facts.num_layers * block
        if relative == "embed_tokens_per_layer.weight":
            self._require(name, shape, axis=1, expected=expected_ple)
            return TensorSpec(name, target, shape, cols=blocks)
        if relative == "per_layer_model_projection.weight":
            self._require(name, shape, axis=0, expected=expected_ple)
            return TensorSpec(name, target, shape, rows=blocks)
        return TensorSpec(name, target, shape)

    def _layer_tensor_spec(self, name: str, shape: tuple[int, ...], layer: int, rest: str,
                           out_prefix: str) -> TensorSpec | None:
        if layer >= self.facts.num_layers:
            raise CheckpointError(f"tensor {name} belongs to layer {layer}, but config.json has "
                                  f"{self.facts.num_layers} layers; the checkpoint and its config disagree")
        if layer not in self.new_index:
            return None
        position = self.new_index[layer]
        target = f"{out_prefix}layers.{position}.{rest}"
        width = self.ffn_widths[position]
        base = self.facts.ffn_widths[layer]
        if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            self._require(name, shape, axis=0, expected=base)
            return TensorSpec(name, target, shape, rows=((0, width),))
        if rest == "mlp.down_proj.weight":
            self._require(name, shape, axis=1, expected=base)
            return TensorSpec(name, target, shape, cols=((0, width),))
        return TensorSpec(name, target, shape)

    @staticmethod
    def _require(name: str, shape: tuple[int, ...], axis: int, expected: int) -> None:
        if len(shape) != 2 or shape[axis] != expected:
            raise CheckpointError(f"tensor {name} has shape {list(shape)}, but config.json implies size {expected} "
                                  f"on axis {axis}; the checkpoint and its config disagree")
