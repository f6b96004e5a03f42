"""How torch's CPU threads wait for work: set for the tool's own processes before torch starts.

torch's CPU builds run their parallel regions on OpenMP threads (GNU libgomp on Linux), which by
default spin for a while (GOMP_SPINCOUNT: 300,000 iterations) each time they wait for each other
or for the next region, between the many small operators of a forward pass. On an idle machine
that spin is invisible; on a machine with other work (a laptop, CI, a shared server, a Ray node
with several workers) the spinning threads take the CPU from the threads doing the work, and
they spin on every operator. Measured with `matformer bench contention` (reports/benchmarks.md):
a nano search beside two busy loops ran 5x slower as shipped than with OMP_WAIT_POLICY=PASSIVE,
which lets a waiting thread sleep; at rest the two were within noise.

The policy is environment variables, read by libgomp (or Intel's libiomp) once, when torch is
first imported: so `apply_thread_policy` runs when a command line starts, before any command
imports torch, and a Ray worker gets the same variables (`policy_environment`). A user who set
any of the variables keeps them, and MATFORMER_THREAD_POLICY=off leaves them all unset (how
`bench contention` measures the tool as shipped before this policy).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

SWITCH = "MATFORMER_THREAD_POLICY"  # "passive" (the default) or "off"
POLICIES = ("passive", "off")
# OpenMP's own variables for how its threads wait: a user who sets any of them decides.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def policy_environment(environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the policy adds to `environment` (default: this process's): none where
    the user set a wait variable or turned the policy off."""
    environment = os.environ if environment is None else environment
    if environment.get(SWITCH, "passive").strip().lower() == "off":
        return {}
    if any(name in environment for name in WAIT_VARIABLES):
        return {}
    return dict(PASSIVE)


def apply_thread_policy(threads: int | None = None) -> None:
    """Set the policy's variables in this process (before torch is imported, or they have no
    effect on its threads) and, with `threads`, the number of threads torch computes with."""
    os.environ.update(policy_environment())
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # already started: its pool is resized through its own call
            sys.modules["torch"].set_num_threads(threads)


def worker_environment() -> dict[str, str]:
    """The wait variables a worker process elsewhere (a Ray node) should start with: this
    process's, whether the user or the policy set them."""
    forwarded = {name: os.environ[name] for name in (*WAIT_VARIABLES, SWITCH) if name in os.environ}
    return {**forwarded, **policy_environment(forwarded)}
