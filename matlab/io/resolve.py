"""Turn what the user typed as a checkpoint into a local directory."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from matlab.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


EMBEDDED = ("nano", "nano-control")


def _embedded_directory(name: str) -> Path:
    return Path(str(resources.files("matlab") / "data" / name))


def embedded_available(name: str) -> bool:
    return (_embedded_directory(name) / "config.json").is_file()


def embedded_checkpoint(name: str) -> Path | None:
    """The directory of a checkpoint shipped inside the package (`nano`, `nano-control`)."""
    if name not in EMBEDDED:
        return None
    directory = _embedded_directory(name)
    if not embedded_available(name):
        raise CheckpointError(f"{name}: the embedded checkpoint is missing from this installation "
                              f"({directory}); reinstall matformer-lab or train it with `matformer train-nano`")
    return directory


def resolve_checkpoint(name: str | Path) -> Path:
    """An embedded checkpoint name, a local directory, or a Hugging Face Hub id downloaded to
    the local cache. Offline, a hub id fails with a message saying to pass a local directory.
    """
    embedded = embedded_checkpoint(str(name))
    if embedded is not None:
        return embedded
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{name}: is a file; pass the checkpoint directory that holds config.json")
    if not _HUB_ID.match(str(name)):
        raise CheckpointError(f"{name}: no such directory; pass a local checkpoint directory or a hub id like "
                              "google/gemma-3n-E4B")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name), allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise CheckpointError(
            f"{name}: not a local directory and the Hugging Face Hub could not provide it ({type(error).__name__}); "
            "if you are offline, download the checkpoint elsewhere and pass its local directory") from None
