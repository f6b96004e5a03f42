"""Where a sliced model runs: one record per runtime (`base.Runtime`), one module each.

Adding a runtime
----------------
1. Write `matlab/runtimes/<name>.py` holding `RUNTIME = Runtime(...)`: the package and the version
   its rules were measured on (its environment installs exactly that), the layout `slice
   --runtime` writes for it, the weight formats its files hold, its rules with their evidence,
   its environment and its conformance runner (a script in `runners/`, protocol in
   `runners/__init__.py`).
2. Add one line to `MODULES` below.
Every list the CLI, slicing, the search space, conformance and the runtime matrix use is derived
from this registry; `tests/test_runtimes.py` fails on a record that lacks a part.
docs/contributing.md walks through it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from matlab.errors import InputError, SliceConfigError

if TYPE_CHECKING:  # the records and their rules are imported when first asked for: `--help` lists names only
    from matlab.plan import SlicePlan
    from matlab.runtimes.base import Runtime, Violation
    from matlab.slice_config.validation import Problem

# name -> module holding its `RUNTIME` record, imported when first asked for.
MODULES = {
    "transformers": "matlab.runtimes.transformers",
    "vllm": "matlab.runtimes.vllm",
    "mlx-lm": "matlab.runtimes.mlx_lm",
    "mlx-vlm": "matlab.runtimes.mlx_vlm",
    "llama.cpp": "matlab.runtimes.llama_cpp",
    "ollama": "matlab.runtimes.ollama",
}


class Registry(Mapping[str, "Runtime"]):
    """The runtimes by name; iterating gives the names in `MODULES` order."""

    def __getitem__(self, name: str) -> Runtime:
        return importlib.import_module(MODULES[name]).RUNTIME

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


RUNTIMES = Registry()


def installable() -> tuple[str, ...]:
    """The runtimes with an environment of their own (`matformer runtimes install`)."""
    return tuple(name for name, runtime in RUNTIMES.items() if runtime.environment is not None)


def conformance_runtimes() -> tuple[str, ...]:
    """The runtimes `matformer conform` can run: those with a runner."""
    return tuple(name for name, runtime in RUNTIMES.items() if runtime.runner is not None)


def check_runtime(runtime: str) -> str:
    """`runtime` itself, or InputError naming the known runtimes."""
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime {runtime}: unknown runtime; choose one of {', '.join(RUNTIMES)}")
    return runtime


def has_rule(runtime: str, name: str) -> bool:
    return any(rule.name == name for rule in RUNTIMES[check_runtime(runtime)].rules)


def runtime_violations(plan: SlicePlan, runtime: str, layout: str | None = None) -> list[Violation]:
    """Every rule of `runtime` that the sliced model breaks (none: it runs there); with `layout`
    named, the rules judged from the layout instead (`Rule.with_layout`) are left out."""
    record = RUNTIMES[check_runtime(runtime)]
    family = plan.facts.family.name
    if record.families and family not in record.families:
        raise InputError(f"runtime rules of {runtime} are known for {', '.join(record.families)} only, not the "
                         f"{family} family")
    from matlab.runtimes.base import Violation

    return [Violation(runtime, rule.name, message, rule.outcome, record.version, rule.evidence)
            for rule in record.rules if (layout is None or rule.with_layout) and (message := rule.check(plan))]


def runtime_problems(plan: SlicePlan, runtime: str, source: str) -> list[Problem]:
    """The violations of `runtime`'s rules as validation problems, one per rule."""
    from matlab.slice_config.validation import Problem

    return [Problem(source, f"runtime {violation.runtime} ({violation.rule})",
                    f"{violation.message} ({violation.consequence})")
            for violation in runtime_violations(plan, runtime)]


def require_runtime(plan: SlicePlan, runtime: str | None, source: str) -> None:
    """Raise SliceConfigError listing every rule of `runtime` the plan breaks."""
    problems = runtime_problems(plan, runtime, source) if runtime else []
    if problems:
        raise SliceConfigError("; ".join(str(problem) for problem in problems))


def require_layout(runtime: str | None, text_only: bool) -> None:
    """Refuse a layout the runtime was measured to compute wrong."""
    reason = RUNTIMES[runtime].layout.text_only_refused if runtime else ""
    if text_only and reason:
        raise SliceConfigError(f"--runtime {runtime} with --text-only: {reason}")




def predicted_verdict(plan: SlicePlan, runtime: str, layout: str) -> tuple[str, str]:
    """What the rules say `runtime` does with this slice written in `layout` ("text-only",
    "multimodal", "mlx-lm", "gguf"): (verdict, the rule's reason), "runs" if no rule objects."""
    from matlab.runtimes.base import FIRST_SEEN, RUNS

    misread = RUNTIMES[check_runtime(runtime)].misread(layout)
    if misread is not None:
        return misread
    violations = sorted(runtime_violations(plan, runtime, layout),
                        key=lambda violation: FIRST_SEEN.index(violation.outcome))
    return (violations[0].outcome, f"{violations[0].rule}: {violations[0].message}") if violations else (RUNS, "")


def _passing(plan: SlicePlan, measured: bool) -> list[str]:
    family = plan.facts.family.name
    return [name for name, runtime in RUNTIMES.items()
            if runtime.measured == measured and (not runtime.families or family in runtime.families)
            and not runtime_violations(plan, name)]


def runs_in(plan: SlicePlan) -> list[str]:
    """The runtimes this slice was measured to run in (each in the layout `slice --runtime` writes)."""
    return _passing(plan, measured=True)


def expected_in(plan: SlicePlan) -> list[str]:
    """The runtimes whose source says this slice runs there, not confirmed by a conformance run."""
    return _passing(plan, measured=False)


def runtimes_line(plan: SlicePlan) -> str:
    """`runs_in` and `expected_in` as one line with versions, for model cards and summaries."""
    measured = ", ".join(f"{name} ({RUNTIMES[name].version})" for name in runs_in(plan))
    expected = ", ".join(f"{name} ({RUNTIMES[name].version})" for name in expected_in(plan))
    return f"measured: {measured or 'none'}; expected from source, not measured: {expected or 'none'}"


__all__ = ["MODULES", "RUNTIMES", "check_runtime", "conformance_runtimes", "expected_in", "has_rule", "installable",
           "predicted_verdict", "require_layout", "require_runtime", "runs_in", "runtime_problems",
           "runtime_violations", "runtimes_line"]
