"""The Ray actor: a model loaded once by the function the driver hands it, then each task the
driver sends, called with the actor's state. It knows nothing of sweeps or searches: those
modules hand it their own functions."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

# A task: called on the worker as task(state, payload); state holds "loaded" (what the load
# function returned) and whatever set-up tasks stored in it.
Task = Callable[[dict[str, Any], Any], Any]


class EvaluationWorker:
    """One per worker (one GPU each where there are GPUs)."""

    def __init__(self, load: Callable[[], Any], threads: int | None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.state: dict[str, Any] = {"loaded": load()}

    def pid(self, _: Any = None) -> int:
        return os.getpid()

    def run(self, task: Task, payload: Any) -> Any:
        return task(self.state, payload)
