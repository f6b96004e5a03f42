"""The repository's slice configs and eval suites, found from a source checkout or a wheel.

`slice_configs/` and `evals/` live at the top of the repository; a wheel carries copies of
them as `matlab/bundled/slice_configs` and `matlab/bundled/evals` (pyproject's package-dir
mapping), so an installed package finds them too. They can be named: `--suite nano` is
`evals/nano.yaml`, `--configs nano` is `slice_configs/nano/`.
"""

from __future__ import annotations

from pathlib import Path

import matlab
from matlab.errors import MatformerError

PACKAGE = Path(matlab.__file__).resolve().parent
FOLDERS = ("slice_configs", "evals")


class BundledError(MatformerError):
    """A bundled folder is missing, or a name matches no bundled suite or config set."""


def bundled_root(folder: str) -> Path:
    """The installed copy (wheel) or the source checkout's folder."""
    for candidate in (PACKAGE / "bundled" / folder, PACKAGE.parent / folder):
        if candidate.is_dir():
            return candidate
    raise BundledError(f"this installation has no {folder}/ (looked in {PACKAGE / 'bundled'} and {PACKAGE.parent}); "
                       "reinstall matformer-lab")


def _names(root: Path, pattern: str) -> list[str]:
    return sorted(path.stem for path in root.glob(pattern))


def resolve_suite(entry: str | Path) -> Path:
    """A suite file's path, or the bundled suite of that name (`nano` -> evals/nano.yaml)."""
    path = Path(entry)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(entry):
        return path
    root = bundled_root("evals")
    candidate = root / f"{entry}.yaml"
    if candidate.is_file():
        return candidate
    raise BundledError(f"--suite {entry}: no such file and no bundled suite of that name; bundled suites: "
                       f"{', '.join(_names(root, '*.yaml'))}")


def resolve_config_entry(entry: str | Path) -> list[Path]:
    """Config files for one `--configs` entry: a YAML file, a folder of them, or the name of a
    bundled set (`nano`, `gemma-3n-e4b`)."""
    path = Path(entry)
    if path.is_dir():
        return sorted(path.glob("*.yaml"))
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(entry):
        return [path]
    root = bundled_root("slice_configs")
    if (root / str(entry)).is_dir():
        return sorted((root / str(entry)).glob("*.yaml"))
    sets = sorted(child.name for child in root.iterdir() if child.is_dir())
    raise BundledError(f"--configs {entry}: no such file or folder and no bundled config set of that name; "
                       f"bundled sets: {', '.join(sets)}")
