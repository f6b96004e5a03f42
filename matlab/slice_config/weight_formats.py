"""`weight_formats` of a slice config: the GGUF format of each group of a submodel's weights.

The YAML form (format names: `matlab.formats.FORMATS`; the per-tensor rules: `matlab.plan.tensor_formats`)::

    weight_formats:
      default: q8_0                # every 2-D text weight not named below
      embeddings: q8_0             # the token embedding (default: `default`)
      per_layer_embeddings: q4_0   # the per-layer embedding table (default: `default`)
      layers:                      # one entry per kept layer, as `ffn_widths` (runs with `count`)
        - {ffn: q4_0, count: 10}   # attention takes `default`
        - {attention: q8_0, ffn: q5_0, count: 15}
        - q4_0                     # attention and FFN both

`layers` may instead map base layer indexes to entries (`{3: {ffn: q4_0}}`), overriding
`default` in those layers only; `weight_formats: q8_0` alone means `{default: q8_0}`.

A llama.cpp file type instead (`weight_formats: q4_k_m`, or `{preset: q4_k_m}`; `{preset: q6_k}`
and `{preset: q8_0}` where the name is also a tensor format) means the types `llama-quantize
--ftype` picks for each tensor of the slice's file (`matlab.formats.presets`): the file people
download. A preset is given alone. The
groups are those a GGUF file types separately: the token embedding and the per-layer table
(llama-quantize's --token-embedding-type, and --tensor-type for the table), and per layer the
attention projections and the FFN; a layer's small tensors (LAuReL, per-layer input gate and
projection, AltUp router) and the model-level projections take `default`. Per-layer lists
follow the kept layers because `ffn_widths` does and a search writes both; the mapping names
layers as `layers_skipped` does, for hand-written overrides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator

from matlab.errors import shown_value
from matlab.formats import FORMATS, check_format
from matlab.formats.types import PRESET_NAMES, check_preset
from matlab.slice_config.fields import MAX_LAYERS, collapse, expand_runs, format_validation_error, whole_number
from matlab.util.runs import runs

FormatName = Annotated[str, BeforeValidator(check_format)]  # its FormatError is a ValueError
PresetName = Annotated[str, BeforeValidator(check_preset)]
# Preset names that are no tensor format: `weight_formats: q4_k_m` alone means the preset.
PRESET_ONLY = tuple(name for name in PRESET_NAMES if name not in FORMATS)


class LayerFormats(BaseModel):
    """The formats of one layer's tensor groups; a group left out takes `weight_formats.default`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    attention: FormatName | None = None
    ffn: FormatName | None = None


class WeightFormats(BaseModel):
    """GGUF formats of a submodel's text weights (the YAML form is in the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    default: FormatName | None = None  # required unless `preset`
    preset: PresetName | None = None
    embeddings: FormatName | None = None
    per_layer_embeddings: FormatName | None = None
    # One entry per kept layer, or base layer index -> entry; None: `default` everywhere.
    layers: tuple[LayerFormats, ...] | dict[int, LayerFormats] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"preset": value} if value.strip().lower() in PRESET_ONLY else {"default": value}
        return value

    @model_validator(mode="after")
    def _preset_alone(self) -> WeightFormats:
        if self.preset is None and self.default is None:
            raise ValueError("give `default` (a format for every tensor not named otherwise) or `preset` (a llama.cpp "
                             "file type such as q4_k_m)")
        given = [name for name in ("default", "embeddings", "per_layer_embeddings", "layers")
                 if getattr(self, name) is not None]
        if self.preset is not None and given:
            raise ValueError(f"preset {self.preset} sets every tensor's type, and {', '.join(given)} would too; give "
                             "the preset alone, or formats without it")
        return self

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_entries(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return _layer_mapping(value)
        if isinstance(value, (list, tuple)):
            return _layer_list(value)
        raise ValueError(f"is {shown_value(value)}; give a list of one entry per kept layer or a mapping of layer "
                         "index to entry")

    @property
    def embeddings_format(self) -> str:
        return self.embeddings or self.default or self._preset_type()

    def _preset_type(self) -> str:
        """The type a preset gives most tensors (for views that ask one format per group)."""
        from matlab.formats.presets import PRESETS

        return PRESETS[self.preset]

    @property
    def per_layer_embeddings_format(self) -> str:
        return self.per_layer_embeddings or self.default or self._preset_type()

    def for_layers(self, kept_layers: Sequence[int]) -> tuple[LayerFormats, ...]:
        """Each kept layer's attention and FFN formats with `default` filled in (validation has
        matched the entries to the kept layers)."""
        if isinstance(self.layers, tuple):
            if len(self.layers) != len(kept_layers):
                raise ValueError(f"{len(self.layers)} layer entries for {len(kept_layers)} kept layers")
            entries: Sequence[LayerFormats | None] = self.layers
        else:
            entries = [(self.layers or {}).get(layer) for layer in kept_layers]
        empty, default = LayerFormats(), self.default or (self._preset_type() if self.preset else None)
        return tuple(LayerFormats(attention=(entry or empty).attention or default,
                                  ffn=(entry or empty).ffn or default) for entry in entries)

    def summary(self) -> str:
        """The formats in a few words: the embeddings', the per-layer table's, and how many
        layers' attention and FFN take each format."""
        if self.preset is not None:
            return f"llama.cpp file type {self.preset}"
        counts: Counter[str] = Counter()
        entries = self.layers.values() if isinstance(self.layers, dict) else (self.layers or ())
        for entry in entries:
            counts.update((entry.attention or self.default, entry.ffn or self.default))
        layer_part = " ".join(f"{fmt}x{count}" for fmt, count in sorted(counts.items()))
        return f"emb {self.embeddings_format}, ple {self.per_layer_embeddings_format}, layers {layer_part}"

    def yaml_data(self) -> dict[str, Any]:
        """The compact YAML form: runs of equal entries with `count`, a format for both groups."""
        if self.preset is not None:
            return {"preset": self.preset}
        data: dict[str, Any] = {"default": self.default}
        for key in ("embeddings", "per_layer_embeddings"):
            if getattr(self, key):
                data[key] = getattr(self, key)
        if isinstance(self.layers, dict):
            data["layers"] = {layer: _entry_data(entry) for layer, entry in sorted(self.layers.items())}
        elif self.layers:
            grouped = runs(self.layers, lambda a, b: a == b)
            data["layers"] = [_entry_data(run[0]) if len(run) == 1 else
                              {**_entry_fields(run[0]), "count": len(run)} for run in grouped]
        return data


def _entry_fields(entry: LayerFormats) -> dict[str, str]:
    return entry.model_dump(exclude_none=True)


def _entry_data(entry: LayerFormats) -> str | dict[str, str]:
    both = entry.attention is not None and entry.attention == entry.ffn
    return entry.attention if both else _entry_fields(entry)


def _layer_entry(item: Any, with_count: bool) -> tuple[LayerFormats, int]:
    """(formats, count) of one `layers` entry: a format, `{attention, ffn}` or (in the list
    form) `{attention, ffn, count}`; a ValueError saying what the entry is otherwise."""
    if isinstance(item, LayerFormats):
        return item, 1
    if isinstance(item, str):
        fmt = check_format(item)
        return LayerFormats(attention=fmt, ffn=fmt), 1
    if not isinstance(item, dict):
        raise ValueError(f"is {shown_value(item)}, not a format or an {{attention, ffn}} entry")
    fields, count = dict(item), 1
    if not with_count and "count" in fields:
        raise ValueError("has a count, but an entry of the layer-index mapping is one layer; give counts in the "
                         "list form")
    if "count" in fields:
        try:
            count = whole_number(fields.pop("count"))
        except ValueError as error:
            raise ValueError(f"count {error}") from None
        if count < 1:
            raise ValueError(f"count is {count}; a run covers at least one layer")
    try:
        return LayerFormats.model_validate(fields), count
    except ValidationError as error:
        raise ValueError(format_validation_error(error)[0]) from None


def _layer_list(value: Sequence[Any]) -> list[LayerFormats]:
    return expand_runs(value, lambda item: _layer_entry(item, with_count=True), "entries")


def _layer_mapping(value: dict[Any, Any]) -> dict[int, LayerFormats]:
    if len(value) > MAX_LAYERS:
        raise ValueError(f"maps {len(value):,} layers; no model has more than {MAX_LAYERS:,}")
    mapping: dict[int, LayerFormats] = {}
    problems: list[tuple[str, str]] = []
    for key, item in value.items():
        try:
            # JSON (a provenance file's slice_config) writes the indexes as strings.
            layer = int(key) if isinstance(key, str) and key.isdecimal() else whole_number(key)
        except ValueError:
            problems.append((f"key {shown_value(key)}", "is not a layer index"))
            continue
        if layer < 0:
            problems.append((f"layer {layer}", "is negative; layers are numbered from 0"))
            continue
        if layer in mapping:
            problems.append((f"layer {layer}", "is listed more than once"))
            continue
        try:
            mapping[layer], _ = _layer_entry(item, with_count=False)
        except ValueError as error:
            problems.append((f"layer {layer}", str(error)))
    if problems:
        raise ValueError("; ".join(collapse(problems, separator=" ")))
    return mapping
