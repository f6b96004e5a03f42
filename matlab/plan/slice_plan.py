"""A validated slice: kept layers, their widths, the rewritten config and per-tensor selections."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from matlab.arch.facts import ArchFacts, facts_from_config
from matlab.errors import CheckpointError, SliceConfigError
from matlab.slice_config import SliceConfig
from matlab.slice_config.validation import Problem, require_valid
from matlab.slice_config.weight_formats import WeightFormats
from matlab.util.runs import merge_ranges

Ranges = tuple[tuple[int, int], ...]
_AXIS_FIELD = {0: "rows", 1: "cols"}


def submodel_id(kept_layers: tuple[int, ...], ffn_widths: tuple[int, ...], formats: dict | None = None) -> str:
    """A short stable identity of a submodel: its kept layers and their widths, however the
    config spelled them (`ffn_widths: 128` and a list of 15 x 128 are the same submodel), and
    its weight formats where it names them (resolved per kept layer: `formats_identity`)."""
    identity: dict[str, Any] = {"kept_layers": list(kept_layers), "ffn_widths": list(ffn_widths)}
    if formats is not None:
        identity["weight_formats"] = formats
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]


def formats_identity(formats: WeightFormats, kept_layers: tuple[int, ...]) -> dict:
    """Weight formats with every default filled in, one entry per kept layer: equal for any
    two spellings of the same formats."""
    if formats.preset is not None:
        return {"preset": formats.preset}
    return {"embeddings": formats.embeddings_format, "per_layer_embeddings": formats.per_layer_embeddings_format,
            "default": formats.default,
            "layers": [[entry.attention, entry.ffn] for entry in formats.for_layers(kept_layers)]}


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
    def build(cls, config: SliceConfig, facts: ArchFacts, source: str = "config") -> SlicePlan:
        warnings = require_valid(config, facts, source)
        skipped = set(config.layers_skipped)
        kept = tuple(layer for layer in range(facts.num_layers) if layer not in skipped)
        return cls(facts, config, kept, tuple(config.widths_for(len(kept))), tuple(warnings))

    @classmethod
    def identity(cls, facts: ArchFacts) -> SlicePlan:
        config = SliceConfig(name="full", ffn_widths=tuple(facts.ffn_widths))
        return cls(facts, config, tuple(range(facts.num_layers)), tuple(facts.ffn_widths))

    @property
    def submodel_id(self) -> str:
        formats = self.config.weight_formats
        return submodel_id(self.kept_layers, self.ffn_widths,
                           None if formats is None else formats_identity(formats, self.kept_layers))

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
        raw, _ = facts.family.split_config(facts.config, facts.name)
        return facts.family.sliced_text_config(raw, facts.text_config, self.kept_layers, self.ffn_widths,
                                               self.num_kv_shared_layers)

    def facts_for_submodel(self) -> ArchFacts:
        """Architecture facts of the text model this plan produces."""
        config = {**self.sliced_text_config(), "model_type": self.facts.family.text_model_type}
        return facts_from_config(config, f"{self.facts.name}[{self.config.name}]")

    def sliced_config(self, text_only: bool, scalar_width: bool = False) -> dict[str, Any]:
        """The whole config.json of the output checkpoint. `scalar_width`: state a uniform FFN
        width as one number (Ollama's converter reads no list)."""
        text_config = self.sliced_text_config()
        if scalar_width:
            if len(set(self.ffn_widths)) != 1:
                raise SliceConfigError(f"{self.config.name}: a scalar FFN width needs one width in every kept layer")
            text_config[self.facts.family.ffn_widths_key] = self.ffn_widths[0]
        if not self.facts.is_multimodal:
            return text_config
        config = copy.deepcopy(self.facts.config)
        config[self.facts.family.text_config_key] = text_config
        return self.facts.family.text_only_config(config) if text_only else config

    def tensor_spec(self, name: str, shape: tuple[int, ...], text_only: bool = False) -> TensorSpec | None:
        """How to produce the output tensor for source tensor `name`, or None to drop it."""
        family, multimodal = self.facts.family, self.facts.is_multimodal
        relative = family.text_relative(name, multimodal)
        if relative is None:
            if not text_only:
                return TensorSpec(name, name, shape)
            head = family.text_only_name(name, multimodal)
            return None if head is None else TensorSpec(name, head, shape)
        out_prefix = family.text_prefix if text_only else self.facts.text_prefix
        match = family.layer_tensor.fullmatch(relative)
        if match:
            return self._layer_tensor_spec(name, shape, match, out_prefix)
        target = out_prefix + relative
        axis = family.layer_blocks.get(relative)
        if axis is None:
            return TensorSpec(name, target, shape)
        block = self.facts.block_size
        self._require(name, shape, axis, self.facts.num_layers * block)
        blocks = merge_ranges((layer * block, (layer + 1) * block) for layer in self.kept_layers)
        return TensorSpec(name, target, shape, **{_AXIS_FIELD[axis]: blocks})

    def _layer_tensor_spec(self, name: str, shape: tuple[int, ...], match: re.Match,
                           out_prefix: str) -> TensorSpec | None:
        layer, rest = int(match.group(1)), match.group(2)
        if layer >= self.facts.num_layers:
            raise CheckpointError(f"tensor {name} belongs to layer {layer}, but config.json has "
                                  f"{self.facts.num_layers} layers; the checkpoint and its config disagree")
        if layer not in self.new_index:
            return None
        position = self.new_index[layer]
        relative = match.string
        target = out_prefix + relative[:match.start(1)] + str(position) + relative[match.end(1):]
        axis = self.facts.family.ffn_cuts.get(rest)
        if axis is None:
            return TensorSpec(name, target, shape)
        self._require(name, shape, axis, self.facts.ffn_widths[layer])
        return TensorSpec(name, target, shape, **{_AXIS_FIELD[axis]: ((0, self.ffn_widths[position]),)})

    @staticmethod
    def _require(name: str, shape: tuple[int, ...], axis: int, expected: int) -> None:
        if len(shape) != 2 or shape[axis] != expected:
            raise CheckpointError(f"tensor {name} has shape {list(shape)}, but config.json implies size {expected} "
                                  f"on axis {axis}; the checkpoint and its config disagree")
