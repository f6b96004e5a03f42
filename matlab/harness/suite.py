"""Evaluation suites: which lm-evaluation-harness tasks to run, with shots, limits and the
metric to plot, plus folders of local task YAMLs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from matlab.errors import MatformerError
from matlab.slice_config import format_validation_error


class SuiteError(MatformerError):
    """A suite file is unreadable, or names a task that cannot be found."""


class Published(BaseModel):
    """Figures a source publishes for named models: where they came from, in what unit and
    dtype, and each model's effective parameters (where a report draws its figures)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str
    unit: Literal["percent", "fraction"] = "percent"
    dtype: str | None = None  # the dtype the source evaluated in
    models: dict[str, int] = Field(min_length=1)  # model name -> effective parameters


class SuiteTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    num_fewshot: int = Field(0, ge=0)
    limit: int | None = Field(None, ge=1)
    metric: str = "acc"
    higher_is_better: bool = True
    card: str | None = None  # the published row this task stands for
    notes: str | None = None  # how task and metric match that row, and where they cannot
    published: dict[str, float] | None = None  # model name -> the source's figure, in its unit
    # A slice config `reference` field stating this task's metric per config (MMLU in Google's CSV).
    stated_field: Literal["mmlu_pt_accuracy"] | None = None


class Suite(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    description: str = ""
    task_dirs: tuple[str, ...] = ()  # local task folders, relative to the suite file
    tasks: tuple[SuiteTask, ...] = Field(min_length=1)
    published: Published | None = None
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _published_models_are_named(self) -> Suite:
        known = set(self.published.models) if self.published else set()
        for position, task in enumerate(self.tasks):
            unknown = sorted(set(task.published or {}) - known)
            if unknown:
                listed = ", ".join(sorted(known)) or "none"
                raise ValueError(f"tasks.{position} ({task.name}): published figures for {', '.join(unknown)}, "
                                 f"which the suite's published.models does not list ({listed})")
        return self

    def published_fraction(self, task: SuiteTask, model: str) -> float | None:
        """A task's published figure for `model` on the 0-1 scale lm-eval reports."""
        if not task.published or model not in task.published:
            return None
        value = task.published[model]
        return value / 100 if self.published and self.published.unit == "percent" else value


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SuiteError(f"{path}: cannot read suite ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise SuiteError(f"{path}: not valid YAML ({error})") from None
    try:
        suite = Suite.model_validate(data)
    except ValidationError as error:
        raise SuiteError(f"{path}: {'; '.join(format_validation_error(error))}") from None
    return suite.model_copy(update={"source": path.resolve()})


def local_task_configs(suite: Suite) -> dict[str, dict[str, Any]]:
    """Task name -> lm-eval task config dict, for the YAML files in the suite's task folders,
    with `data_files` made absolute relative to each YAML file."""
    base = suite.source.parent if suite.source else Path.cwd()
    configs: dict[str, dict[str, Any]] = {}
    for folder in suite.task_dirs:
        directory = (base / folder).resolve()
        if not directory.is_dir():
            raise SuiteError(f"{suite.source}: task_dirs entry {folder!r} is not a directory ({directory})")
        for task_file in sorted(directory.glob("*.yaml")):
            config = yaml.safe_load(task_file.read_text(encoding="utf-8"))
            if not isinstance(config, dict) or "task" not in config:
                continue
            config = copy.deepcopy(config)
            data_files = config.get("dataset_kwargs", {}).get("data_files")
            if isinstance(data_files, dict):
                config["dataset_kwargs"]["data_files"] = {split: str((task_file.parent / file).resolve())
                                                          for split, file in data_files.items()}
            configs[config["task"]] = config
    return configs
