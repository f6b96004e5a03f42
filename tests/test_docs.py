"""The docs stay true to the code: the architecture page names every module of the package."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_architecture_page_names_every_module():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = [path.relative_to(REPO).as_posix() for path in sorted((REPO / "matlab").rglob("*.py"))]
    named_packages = [module for module in modules if module.endswith("__init__.py")
                      and f"`{module}`" not in page]
    missing = [module for module in modules if not module.endswith("__init__.py") and f"`{module}`" not in page]
    assert not missing, f"docs/architecture.md does not name {missing}"
    # A package's __init__ is named where it holds more than a docstring and re-exports.
    for init in named_packages:
        source = (REPO / init).read_text(encoding="utf-8")
        assert "def " not in source and "class " not in source, f"docs/architecture.md does not name {init}"


def test_architecture_page_names_no_module_that_is_gone():
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    gone = [name for name in re.findall(r"`(matlab/[\w/]+\.py)`", page) if not (REPO / name).is_file()]
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"
