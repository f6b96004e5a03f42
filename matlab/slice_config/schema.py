"""Slice configs: which layers to skip and the FFN width of every kept layer, as YAML.

Example::

    name: E2B
    base: gemma-3n-e4b
    layers_skipped: [20, 21, 22, 23, 24]
    ffn_widths:
      - {width: 8192, count: 30}

`ffn_widths` lists one width per kept layer; a run of equal widths may be written as
`{width: W, count: N}`, and a single integer means "this width in every kept layer".

An optional `weight_formats` stores the submodel in GGUF formats (`matlab.slice_config.weight_formats`).

Whatever a file holds, loading it ends in a SliceConfig or in one SliceConfigError line: the
file's size, its text, its nesting and the layer counts it asks for are bounded before any
list is built, and many problems of one kind are reported once, with a count.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from matlab.errors import SliceConfigError, shown_value
from matlab.slice_config.fields import (
    MAX_LAYERS,
    WholeNumber,
    expand_runs,
    first_few,
    format_validation_error,
    whole_number,
)
from matlab.slice_config.weight_formats import WeightFormats
from matlab.util.runs import width_runs

MAX_FILE_BYTES = 1 << 20  # a slice config is a few hundred bytes; a larger file is not one


class WidthRun(BaseModel):
    """`count` consecutive kept layers of FFN width `width`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    width: WholeNumber
    count: WholeNumber = Field(ge=1)


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
    layers_skipped: tuple[WholeNumber, ...] = ()
    ffn_widths: int | tuple[int, ...]
    weight_formats: WeightFormats | None = None
    reference: Reference | None = None

    @field_validator("layers_skipped", mode="before")
    @classmethod
    def _skips_are_listed(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, (list, tuple)) and len(value) > MAX_LAYERS:
            raise ValueError(f"lists {len(value):,} layers; no model has more than {MAX_LAYERS:,}")
        return value

    @field_validator("layers_skipped")
    @classmethod
    def _skips_are_distinct(cls, skips: tuple[int, ...]) -> tuple[int, ...]:
        repeated = sorted(index for index, times in Counter(skips).items() if times > 1)
        if repeated:
            raise ValueError(f"layer(s) [{first_few(repeated)}] listed more than once; list each skipped layer once")
        negative = [index for index in skips if index < 0]
        if negative:
            raise ValueError(f"layer index(es) [{first_few(negative)}] are negative; layers are numbered from 0")
        return tuple(sorted(skips))

    @field_validator("ffn_widths", mode="before")
    @classmethod
    def _expand_runs(cls, value: Any) -> Any:
        """Whole numbers only, `{width, count}` runs expanded; the running total is bounded
        before anything is expanded (a count of 10**8 would otherwise build that list)."""
        if not isinstance(value, (list, tuple)):
            return whole_number(value)
        return expand_runs(value, _width_run, "widths")

    @field_validator("ffn_widths")
    @classmethod
    def _widths_are_positive(cls, widths: int | tuple[int, ...]) -> int | tuple[int, ...]:
        listed = (widths,) if isinstance(widths, int) else widths
        bad = [f"kept layer {position}: {width}" for position, width in enumerate(listed) if width <= 0]
        if bad:
            raise ValueError(f"FFN widths must be positive ({first_few(bad, separator='; ')})")
        return widths

    def widths_for(self, kept_layer_count: int) -> tuple[int, ...]:
        """The width of each kept layer, expanding a single integer to every kept layer."""
        if isinstance(self.ffn_widths, int):
            return (self.ffn_widths,) * kept_layer_count
        return self.ffn_widths


def _width_run(item: Any) -> tuple[int, int]:
    """(width, count) of one `ffn_widths` entry, a width or a `{width, count}` run; a
    ValueError saying what the entry is otherwise (`entry N <message>`)."""
    if not isinstance(item, dict):
        try:
            return whole_number(item), 1
        except ValueError:
            raise ValueError(f"is {shown_value(item)}, not a whole number") from None
    try:
        run = WidthRun.model_validate(item)
    except ValidationError as error:
        raise ValueError(f"is not a {{width, count}} run: {format_validation_error(error)[0]}") from None
    return run.width, run.count


def parse_slice_config(data: Any, source: str) -> SliceConfig:
    """Validate already-parsed YAML data; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise SliceConfigError(f"{source}: expected a mapping with name, layers_skipped and ffn_widths")
    try:
        return SliceConfig.model_validate(data)
    except ValidationError as error:
        details = "; ".join(format_validation_error(error))
        raise SliceConfigError(f"{source}: {details}") from None
    except RecursionError:  # nesting yaml could parse but pydantic cannot walk
        raise SliceConfigError(f"{source}: nested too deeply to be a slice config") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its own text spans several lines)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        return error.problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark else "")
    return " ".join(str(error).split())


def load_slice_config(path: str | Path) -> SliceConfig:
    """Read one slice config YAML file: at most MAX_FILE_BYTES of UTF-8 YAML."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # a device or a huge file is not read to its end
    except OSError as error:
        raise SliceConfigError(f"{path}: cannot read slice config ({error.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise SliceConfigError(f"{path}: larger than {MAX_FILE_BYTES // 1024:,} KiB; a slice config is a short YAML "
                               "file, pass that")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SliceConfigError(f"{path}: not UTF-8 text (byte {error.start:,} is {data[error.start]:#04x}); "
                               "a slice config is a YAML text file") from None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SliceConfigError(f"{path}: not valid YAML ({_yaml_problem(error)})") from None
    except RecursionError:
        raise SliceConfigError(f"{path}: YAML nested too deeply to be a slice config") from None
    except ValueError:  # PyYAML's int() of a literal thousands of digits long
        raise SliceConfigError(f"{path}: holds an integer thousands of digits long; widths and layer indexes are "
                               "short numbers") from None
    return parse_slice_config(parsed, str(path))


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
    if config.weight_formats:
        data["weight_formats"] = config.weight_formats.yaml_data()
    if config.reference:
        data["reference"] = config.reference.model_dump(exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
