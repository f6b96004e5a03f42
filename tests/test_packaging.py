"""The package as users get it: a wheel installed elsewhere, a clone without ../shared."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

from matlab.demo import SEARCH_BUDGET

REPO = Path(__file__).resolve().parent.parent


def test_nothing_reads_outside_the_repository():
    """Users clone the repository alone or install a wheel: no code or test may reach for the
    workplace's ../shared folder."""
    outside = re.compile(r"""["']shared["']|shared/reference|\.\./shared""")
    offenders = [f"{path.relative_to(REPO)}:{number}"
                 for folder in ("matlab", "tests") for path in sorted((REPO / folder).rglob("*.py"))
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if outside.search(line) and path.name != "test_packaging.py"]
    assert offenders == []


def test_every_package_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "matlab").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_wheel_installed_elsewhere_runs_the_demo(tmp_path):
    """Built as a wheel and installed into a fresh folder, run from another directory: the demo
    finds its configs and suite inside the package and writes its report."""
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(wheels)], check=True,
                   cwd=tmp_path)
    (wheel,) = wheels.glob("matformer_lab-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import matlab; print(matlab.__file__)"], env=environment, cwd=work,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(site / "matlab" / "__init__.py")  # the wheel's copy, not the checkout
    demo = subprocess.run([sys.executable, "-m", "matlab", "demo", "--limit", "1", "--out", "out"], env=environment,
                          cwd=work, capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (work / "out" / "report" / "index.html").is_file()
    # The --limit'ed demo's search is its least, and still finds slices within the demo's budget.
    best = json.loads((work / "out" / "search" / "search.json").read_text())["best"]
    assert best is not None and best["effective_params"] <= SEARCH_BUDGET
    assert len(list((work / "out" / "sweep" / "configs").glob("*.json"))) == len(list(
        (REPO / "slice_configs" / "nano").glob("*.yaml")))


def test_params_and_text_only_work_without_timm(tmp_path):
    """timm (the vision tower's library) is an extra: counting E4B, text-only or whole, must not
    need it."""
    blocked = "import sys; sys.modules['timm'] = None; sys.modules['torchvision'] = None; import runpy; " \
              "sys.argv = ['matformer', *sys.argv[1:]]; runpy.run_module('matlab', run_name='__main__')"
    e2b = str(REPO / "slice_configs" / "gemma-3n-e4b" / "e2b.yaml")
    for extra in ([], ["--text-only"]):
        result = subprocess.run([sys.executable, "-c", blocked, "params", "--arch", "gemma-3n-e4b", "--config", e2b,
                                 "--json", *extra], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert '"effective_params": 1905495648' in result.stdout
