"""Which Hugging Face datasets a suite's lm-eval tasks read, and whether they can be had.

Checked before any work: offline, a suite whose datasets are not in the local caches stops
with one line naming them all, instead of failing on its first task after the model loaded.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from matlab.harness.suite import Suite, SuiteError, local_task_configs


@lru_cache(maxsize=2)
def task_manager(include_defaults: bool):
    """lm-eval's task index (indexing its bundled task files takes seconds: built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _datasets_of(manager, name: str, found: dict[str, list[str]], owner: str) -> None:
    entry = manager.task_index.get(name)
    if entry is None:
        raise SuiteError(f"task {owner!r} is neither in the suite's task_dirs nor known to lm-eval")
    config = entry.cfg or {}
    if isinstance(config.get("task"), list):  # a group or tag: its member tasks
        for member in config["task"]:
            if isinstance(member, str):
                _datasets_of(manager, member, found, owner)
            elif isinstance(member, dict) and member.get("dataset_path"):
                found.setdefault(member["dataset_path"], []).append(owner)
    elif config.get("dataset_path"):
        found.setdefault(config["dataset_path"], [])
        if owner not in found[config["dataset_path"]]:
            found[config["dataset_path"]].append(owner)


def hub_datasets(suite: Suite) -> dict[str, list[str]]:
    """Dataset id -> the suite's tasks that read it, for tasks that are not local files."""
    local = local_task_configs(suite)
    remote = [task.name for task in suite.tasks if task.name not in local]
    found: dict[str, list[str]] = {}
    if remote:
        manager = task_manager(True)
        for name in remote:
            _datasets_of(manager, name, found, name)
    return found


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers at all (False when told to stay offline)."""
    if any(os.environ.get(flag, "").lower() in ("1", "true", "yes") for flag in ("HF_HUB_OFFLINE",
                                                                                  "HF_DATASETS_OFFLINE")):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached(dataset: str) -> bool:
    """Whether `datasets` or the Hub cache holds a copy of `dataset`."""
    import datasets
    from huggingface_hub import constants

    return (Path(datasets.config.HF_DATASETS_CACHE) / dataset.replace("/", "___")).is_dir() or \
        (Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}").is_dir()


def require_datasets(suite: Suite) -> None:
    """Raise SuiteError naming every dataset the suite needs that cannot be had (offline and not cached)."""
    needed = hub_datasets(suite)
    if not needed or hub_reachable():
        return
    missing = [f"{dataset} ({', '.join(tasks)})" for dataset, tasks in sorted(needed.items()) if not cached(dataset)]
    if missing:
        raise SuiteError(f"suite {suite.name} needs Hugging Face datasets that the Hub cannot provide (offline) and "
                         f"the local cache does not hold: {'; '.join(missing)}; run it once with a network "
                         "connection, or fill the datasets cache (HF_DATASETS_CACHE) on a connected machine")
