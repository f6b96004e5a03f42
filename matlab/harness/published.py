"""Published figures beside measured ones: a suite's figures per model (the Gemma 3n model
card's E2B and E4B) and the figures slice configs state (Google's MMLU per config)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from matlab.harness.suite import Suite, SuiteTask


def run_suite(run: dict[str, Any]) -> Suite | None:
    """The suite a sweep ran, as recorded in its run.json (None for a record it cannot read)."""
    try:
        return Suite.model_validate(run.get("identity", {}).get("suite", {}))
    except ValidationError:
        return None


def task_of(suite: Suite | None, name: str) -> SuiteTask | None:
    return next((task for task in suite.tasks if task.name == name), None) if suite else None


def marks(suite: Suite | None, name: str) -> list[tuple[float, float, str]]:
    """(effective parameters, figure on lm-eval's scale, label) of each published model."""
    task = task_of(suite, name)
    if task is None or not task.published or suite.published is None:
        return []
    return [(float(suite.published.models[model]), suite.published_fraction(task, model), f"{model} (card)")
            for model in task.published]


def published_for(suite: Suite | None, name: str, effective_params: int) -> tuple[str, float] | None:
    """(model, figure) when a config is one of the published models (its exact parameter count)."""
    task = task_of(suite, name)
    if task is None or not task.published or suite.published is None:
        return None
    for model, params in suite.published.models.items():
        if params == effective_params and model in task.published:
            return model, suite.published_fraction(task, model)
    return None


def cell(measured: float | None, reference: float | None) -> str:
    """'measured' or 'measured / reference (+d.d)', the difference in points of 100."""
    if measured is None:
        return ""
    if reference is None:
        return f"{measured:.4g}"
    return f"{measured:.4g} / {reference:.4g} ({100 * (measured - reference):+.1f})"


def comparison(suite: Suite | None, measured: dict[tuple[str, int], float]) -> list[dict[str, Any]]:
    """One row per task with published figures: the card's row, lm-eval's task and metric, how
    they match, and per model the figure, the measured value (if the run has that model) and
    the difference. `measured` maps (task, effective parameters) to the run's value."""
    if suite is None or suite.published is None:
        return []
    rows = []
    for task in suite.tasks:
        if not task.published:
            continue
        models = []
        for model, params in suite.published.models.items():
            figure = suite.published_fraction(task, model)
            value = measured.get((task.name, params))
            models.append({"model": model, "published": "" if figure is None else f"{figure:.4g}",
                           "measured": "" if value is None else f"{value:.4g}",
                           "difference": "" if value is None or figure is None else f"{100 * (value - figure):+.1f}"})
        rows.append({"card": task.card or task.name, "task": f"{task.name} {task.metric}, {task.num_fewshot}-shot",
                     "notes": task.notes or "", "models": models})
    return rows


def dtype_note(suite: Suite | None, run_dtype: str) -> str:
    if suite is None or suite.published is None:
        return ""
    source = suite.published
    evaluated = f" evaluated in {source.dtype}" if source.dtype else ""
    differs = f"; this run used {run_dtype}, so small differences are expected" if source.dtype and \
        source.dtype != run_dtype else ""
    return f"Published figures: {source.source}{evaluated}{differs}. Differences are in points (of 100)."
