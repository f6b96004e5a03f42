"""The repository's slice configs and eval suites, found from a source checkout or a wheel.

`slice_configs/` and `evals/` live at the top of the repository; a wheel carries copies of
them as `matlab/bundled/slice_configs` and `matlab/bundled/evals` (pyproject's package-dir
mapping), so an installed package finds them too. They can be named: `--suite nano` is
`evals/nano.yaml`, `--configs nano` is `slice_configs/nano/`. A bare name is the bundled one
even where the working directory holds a file or folder of that name; `./nano` is the local one.
"""

from __future__ import annotations

import os
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


def _is_name(entry: str | Path) -> bool:
    """Whether `entry` is written as a bare name (no folder part, no YAML suffix), which names
    a bundled suite or config set before anything in the working directory, as `nano` names
    the embedded checkpoint whatever folders sit there. `./nano` names the local one."""
    text = str(entry)
    return "/" not in text and os.sep not in text and Path(text).suffix not in (".yaml", ".yml")


def resolve_suite(entry: str | Path) -> Path:
    """The bundled suite of a bare name (`nano` -> evals/nano.yaml), else the suite file's path."""
    path = Path(entry)
    if _is_name(entry):
        root = bundled_root("evals")
        candidate = root / f"{entry}.yaml"
        if candidate.is_file():
            return candidate
        if path.exists():
            return path
        raise BundledError(f"--suite {entry}: no such file and no bundled suite of that name; bundled suites: "
                           f"{', '.join(_names(root, '*.yaml'))}")
    return path


def resolve_config_entry(entry: str | Path) -> list[Path]:
    """Config files for one `--configs` entry: the bundled set of a bare name (`nano`,
    `gemma-3n-e4b`), else a YAML file or a folder of them."""
    path = Path(entry)
    if _is_name(entry):
        root = bundled_root("slice_configs")
        if (root / str(entry)).is_dir():
            return sorted((root / str(entry)).glob("*.yaml"))
        if not path.exists():
            sets = sorted(child.name for child in root.iterdir() if child.is_dir())
            raise BundledError(f"--configs {entry}: no such file or folder and no bundled config set of that name; "
                               f"bundled sets: {', '.join(sets)}")
    if path.is_dir():
        return sorted(path.glob("*.yaml"))
    return [path]
