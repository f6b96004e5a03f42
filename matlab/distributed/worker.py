"""The Ray actor: the full model loaded once, evaluating sweep configs and search candidates
with the sweep's and the search's own functions."""

from __future__ import annotations

import os
from typing import Any


class EvaluationWorker:
    """One per worker (one GPU each where there are GPUs)."""

    def __init__(self, checkpoint: str, device: str, dtype: str, threads: int | None) -> None:
        import torch

        from matlab.core.loading import load_model

        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_model(checkpoint, device=device, dtype=dtype)
        self.search: dict[str, Any] = {}

    def pid(self, _: Any = None) -> int:
        return os.getpid()

    def sweep_config(self, payload: dict[str, Any]) -> list[dict]:
        from matlab.harness.sweep import evaluate_config

        return evaluate_config(self.loaded, **payload)

    def latencies(self, payload: dict[str, Any]) -> dict:
        import socket

        from matlab.harness.sweep import config_latencies

        return {"latencies": config_latencies(self.loaded, payload["configs"], payload["settings"]),
                "host": socket.gethostname()}

    def reference(self, payload: dict[str, Any]):
        from matlab.search.objective import reference_distributions

        return reference_distributions(self.loaded.model, payload["calibration"], payload["top_k"])

    def search_setup(self, payload: dict[str, Any]) -> None:
        self.search = payload

    def search_candidate(self, config) -> tuple[float, float, float]:
        from matlab.plan import SlicePlan
        from matlab.search.objective import measure_candidate

        plan = SlicePlan.build(config, self.loaded.facts, config.name)
        return measure_candidate(self.loaded.model, plan, self.search["calibration"], self.search["reference"])
