"""Slice config files checked as `matformer validate` checks them: each file loaded, every
problem against an architecture and, optionally, a runtime's rules.

Apart from `validation` because it builds plans (for the runtime rules), and the plan is built
from validated configs: kept here, neither module needs the other's importer.
"""

from __future__ import annotations

from pathlib import Path

from matlab.arch.facts import ArchFacts
from matlab.errors import SliceConfigError
from matlab.plan import SlicePlan
from matlab.runtimes import check_runtime, runtime_problems
from matlab.slice_config import load_slice_config
from matlab.slice_config.validation import Problem, check_slice_config


def check_config_files(paths: list[Path], facts: ArchFacts, runtime: str | None = None) -> dict[Path, list[Problem]]:
    """Load and check each file; a file that does not parse yields one problem naming it. With
    `runtime`, a config that is otherwise valid is also checked against that runtime's rules."""
    if runtime:
        check_runtime(runtime)
    report: dict[Path, list[Problem]] = {}
    for path in paths:
        try:
            config = load_slice_config(path)
        except SliceConfigError as error:
            report[path] = [Problem(str(path), "file", str(error).removeprefix(f"{path}: "))]
            continue
        problems = check_slice_config(config, facts, str(path))
        if runtime and not any(problem.severity == "error" for problem in problems):
            problems += runtime_problems(SlicePlan.build(config, facts, str(path)), runtime, str(path))
        report[path] = problems
    return report
