"""Each real runtime in its own virtual environment, set up by the project itself.

vLLM's CPU build pins an older torch and transformers than ours, mlx-lm and mlx-vlm pin their
own mlx, and llama.cpp is compiled from llama-cpp-python's source. So each runtime gets a venv
under one root (`$MATFORMER_RUNTIMES`, else `~/.cache/matformer/runtimes`), and conformance
runs start that venv's interpreter on the runtime's runner script (`runners/`). What is
installed is the runtime record's (`matlab.runtimes`): its own package pinned to the version
its rules were measured on, its other requirements, its build where pip cannot install it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from matlab import __version__
from matlab.errors import InputError, MatformerError
from matlab.runtimes import RUNTIMES, installable
from matlab.runtimes.base import RUNNERS

ROOT_VARIABLE = "MATFORMER_RUNTIMES"
INSTALLED = "installed.json"
__all__ = ["INSTALLED", "ROOT_VARIABLE", "RUNNERS", "env_directory", "install_runtime", "installed_versions",
           "interpreter", "run_step", "runtimes_root"]


def runtimes_root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE) or Path.home() / ".cache" / "matformer" / "runtimes")


def env_directory(runtime: str) -> Path:
    return runtimes_root() / runtime


def interpreter(runtime: str) -> Path:
    """The Python of `runtime`'s environment, or InputError saying how to install it."""
    record = RUNTIMES[runtime]
    if record.environment is None:
        return Path(sys.executable)  # this project's own environment (transformers)
    directory = env_directory(runtime)
    if not (directory / INSTALLED).is_file():
        raise InputError(f"runtime {runtime} is not installed under {directory}: run `matformer runtimes install "
                         f"{runtime}` (about {record.environment.minutes} minutes on 2 cores; set {ROOT_VARIABLE} to "
                         "install elsewhere)")
    return directory / "venv" / "bin" / "python"


def installed_versions() -> dict[str, dict]:
    """runtime -> the record its install wrote (versions, when), for the installed ones."""
    found = {}
    for runtime in installable():
        record = env_directory(runtime) / INSTALLED
        if record.is_file():
            try:
                found[runtime] = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return found


def install_runtime(runtime: str, log: Callable[[str], None]) -> Path:
    """Create (or complete) `runtime`'s environment; returns its directory. Idempotent: an
    environment whose install finished is left alone."""
    if runtime not in installable():
        raise InputError(f"runtime {runtime}: nothing to install; choose one of {', '.join(installable())}")
    record = RUNTIMES[runtime]
    spec, directory = record.environment, env_directory(runtime)
    python = directory / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if (directory / INSTALLED).is_file():
        if spec.plugin and not _has_plugin(python):  # installed before the plugin was, or from another checkout
            run_step([*pip, "--no-deps", *this_package()], directory, log)
            log(f"{runtime}: this package's plugin installed in {directory}")
            return directory
        log(f"{runtime}: already installed in {directory}")
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        run_step([sys.executable, "-m", "venv", str(directory / "venv")], directory, log)
    if spec.build is not None:  # the runtime's own package, built where pip cannot install it
        extra = spec.build(record.requirement, directory, python, log)
        run_step([*pip, *spec.requirements, *extra], directory, log)
    else:
        run_step([*pip, record.requirement, *spec.requirements], directory, log)
    if spec.remove:
        run_step([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *spec.remove], directory, log)
    if spec.plugin:
        run_step([*pip, "--no-deps", *this_package()], directory, log)
    versions = json.loads(subprocess.run(
        [str(python), "-c", "import importlib.metadata as m, json; "
         "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True).stdout)
    (directory / INSTALLED).write_text(json.dumps({"runtime": runtime, "requirements": [record.requirement,
                                                                                         *spec.requirements],
                                                   "versions": versions}, indent=1) + "\n", encoding="utf-8")
    log(f"{runtime}: installed in {directory}")
    return directory


def _has_plugin(python: Path) -> bool:
    """Whether the environment of `python` has this very package (this source tree, or this
    version), with its entry points: another checkout's editable install does not count."""
    found = subprocess.run([str(python), "-c", "import importlib.metadata as m, pathlib, matlab; "
                            "print(m.version('matformer-lab')); print(pathlib.Path(matlab.__file__).parent)"],
                           capture_output=True, text=True, cwd=python.parent)  # not where a source tree lies
    if found.returncode:
        return False
    version, folder = (found.stdout.splitlines() + ["", ""])[:2]
    ours = Path(__file__).resolve().parents[1]
    return Path(folder).resolve() == ours if this_package()[0] == "-e" else version == __version__


def this_package() -> list[str]:
    """pip's arguments for this package: the source tree it runs from (editable, so the runtime
    sees the same code), else the released version."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "matlab" / "__init__.py").is_file():
        return ["-e", str(root)]
    return [f"matformer-lab=={__version__}"]


def run_step(command: list[str], directory: Path, log: Callable[[str], None],
             variables: dict[str, str] | None = None) -> None:
    """Run one install step, its output kept in DIRECTORY/install.log; a failure is one line."""
    log("  " + " ".join(command))
    with open(directory / "install.log", "a", encoding="utf-8") as output:
        finished = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(variables or {})})
    if finished.returncode:
        raise MatformerError(f"installing {directory.name} failed at `{' '.join(command[:6])} ...` "
                             f"(exit {finished.returncode}); see {directory / 'install.log'}")
