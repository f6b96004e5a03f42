"""Slice configs: which layers to skip and the FFN width of every kept layer, as YAML.

Example::

    name: E2B
    base: gemma-3n-e4b
    layers_skipped: [20, 21, 22, 23, 24]
    ffn_widths:
      - {width: 8192, count: 30}

`ffn_widths` lists one width per kept layer; a run of equal widths may be written as
`{width: W, count: N}`, and a single integer means "this width in every kept layer".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from matlab.errors import SliceConfigError
from matlab.runs import width_runs


class WidthRun(BaseModel):
    """`count` consecutive kept layers of FFN width `width`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    width: int
    count: int = Field(ge=1)


class Reference(BaseModel):
    """Figures stated by the config's source, shown beside the workbench's exact ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str | None = None
    name: str | None = None
    effective_params_b: float | None = None
    mmlu_pt_accuracy: float | None = None
    notes: str | None = None
    # Figures the producing tool measured (a search: cost and objective), by name.
    measured: dict[str, float] | None = None


class SliceConfig(BaseModel):
    """A Mix-n-Match submodel of a MatFormer base model."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    base: str | None = None
    layers_skipped: tuple[int, ...] = ()
    ffn_widths: int | tuple[int, ...]
    reference: Reference | None = None

    @field_validator("layers_skipped", mode="before")
    @classmethod
    def _skips_are_listed(cls, value: Any) -> Any:
        return () if value is None else value

    @field_validator("layers_skipped")
    @classmethod
    def _skips_are_distinct(cls, skips: tuple[int, ...]) -> tuple[int, ...]:
        repeated = sorted({index for index in skips if skips.count(index) > 1})
        if repeated:
            raise ValueError(f"layer(s) {repeated} listed more than once; list each skipped layer once")
        negative = [index for index in skips if index < 0]
        if negative:
            raise ValueError(f"layer index(es) {negative} are negative; layers are numbered from 0")
        return tuple(sorted(skips))

    @field_validator("ffn_widths", mode="before")
    @classmethod
    def _expand_runs(cls, value: Any) -> Any:
        if isinstance(value, (int, str)) or value is None:
            return value
        expanded: list[Any] = []
        for position, item in enumerate(value):
            if isinstance(item, dict):
                try:
                    run = WidthRun.model_validate(item)
                except ValidationError as error:
                    message = error.errors()[0]["msg"]
                    raise ValueError(f"entry {position} is not a {{width, count}} run: {message}") from None
                expanded.extend([run.width] * run.count)
            else:
                expanded.append(item)
        return expanded

    @field_validator("ffn_widths")
    @classmethod
    def _widths_are_positive(cls, widths: int | tuple[int, ...]) -> int | tuple[int, ...]:
        listed = (widths,) if isinstance(widths, int) else widths
        bad = [f"kept layer {position}: {width}" for position, width in enumerate(listed) if width <= 0]
        if bad:
            raise ValueError(f"FFN widths must be positive ({'; '.join(bad)})")
        return widths

    def widths_for(self, kept_layer_count: int) -> tuple[int, ...]:
        """The width of each kept layer, expanding a single integer to every kept layer."""
        if isinstance(self.ffn_widths, int):
            return (self.ffn_widths,) * kept_layer_count
        return self.ffn_widths


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per pydantic problem: `field[.index]: message`."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{location}: {message}")
    return lines


def parse_slice_config(data: Any, source: str) -> SliceConfig:
    """Validate already-parsed YAML data; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise SliceConfigError(f"{source}: expected a mapping with name, layers_skipped and ffn_widths")
    try:
        return SliceConfig.model_validate(data)
    except ValidationError as error:
        details = "; ".join(format_validation_error(error))
        raise SliceConfigError(f"{source}: {details}") from None


def load_slice_config(path: str | Path) -> SliceConfig:
    """Read one slice config YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SliceConfigError(f"{path}: cannot read slice config ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SliceConfigError(f"{path}: not valid YAML ({error})") from None
    return parse_slice_config(data, str(path))


def _compact_widths(widths: tuple[int, ...]) -> list[Any]:
    return [width if count == 1 else {"width": width, "count": count} for width, count in width_runs(widths)]


def dump_slice_config(config: SliceConfig) -> str:
    """YAML text for a config, with runs of equal widths written compactly."""
    data: dict[str, Any] = {"name": config.name}
    if config.description:
        data["description"] = config.description
    if config.base:
        data["base"] = config.base
    data["layers_skipped"] = list(config.layers_skipped)
    data["ffn_widths"] = config.ffn_widths if isinstance(config.ffn_widths, int) else _compact_widths(config.ffn_widths)
    if config.reference:
        data["reference"] = config.reference.model_dump(exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
