"""How torch's CPU threads wait for work: set for the tool's own processes before torch starts.

torch's CPU builds run their parallel regions on OpenMP threads (GNU libgomp on Linux), which by
default spin for a while (GOMP_SPINCOUNT: 300,000 iterations) each time they wait for each other
or for the next region, between the many small operators of a forward pass. On an idle machine
that spin is what makes them fast; on a machine with other work (a laptop, CI, a shared server,
a Ray node with several workers) the spinning threads take the CPU from the threads doing the
work, on every operator. Measured with `matformer bench contention` (reports/benchmarks.md):
beside two busy loops on 2 cores a nano search, an evaluation and a heal ran 1.2-2.3x slower as
shipped than with a short spin (3,000 iterations); OMP_WAIT_POLICY=PASSIVE (no spin) did as well
under load but made a heal 57% slower at rest, and even the short spin cost some workloads 7-8%
at rest. So the policy is decided when the process starts: on a busy machine (`machine_busy`:
another runnable task, or a high load average) the short spin, on an idle one torch's own.

The policy is environment variables, read by libgomp once, when torch is first imported: so
`apply_thread_policy` runs when a command line starts, before any command imports torch; Ray
workers, which share their node with each other, get the short spin (`worker_environment`). A
user who set any wait variable keeps it; MATFORMER_THREAD_POLICY=off leaves them all unset (how
`bench contention` measures the tool as shipped before this policy), =short-spin always sets it.
Builds on another OpenMP runtime (LLVM's libomp on macOS, Intel's) read other variables
(KMP_BLOCKTIME), which this policy does not set: unmeasured.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

SWITCH = "MATFORMER_THREAD_POLICY"  # "auto" (the default), "short-spin" (always) or "off" (never)
POLICIES = ("auto", "short-spin", "off")
# OpenMP's own variables for how its threads wait: a user who sets any of them decides.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# libgomp spins this many iterations (about a few microseconds) before a waiting thread sleeps:
# long enough to catch the next operator on an idle machine, short enough not to take the CPU
# from other work (measured against PASSIVE, 1k, 2k, 3k, 10k, 100k: reports/benchmarks.md).
SHORT_SPIN = {"GOMP_SPINCOUNT": "3000"}


def machine_busy(samples: int = 5, interval: float = 0.01) -> bool:
    """Whether other work keeps this machine's CPUs busy as the process starts: on average at
    least one runnable task besides this one (`/proc/loadavg`'s running count, sampled), or a
    one-minute load of at least three quarters of the cores. False where it cannot be read."""
    cores = os.cpu_count() or 1
    others = []
    try:
        for sample in range(samples):
            with open("/proc/loadavg", encoding="ascii") as loadavg:
                fields = loadavg.read().split()
            others.append(int(fields[3].split("/")[0]) - 1)  # this process is running: not another's work
            if sample + 1 < samples:
                time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return False
    return sum(others) / len(others) >= 1 or float(fields[0]) >= 0.75 * cores


def policy_environment(environment: Mapping[str, str] | None = None, busy: bool | None = None) -> dict[str, str]:
    """The variables the policy adds to `environment` (default: this process's): none where
    the user set a wait variable or turned the policy off, or on an idle machine (`busy`,
    default `machine_busy()`), where torch's own spin is the fastest."""
    environment = os.environ if environment is None else environment
    choice = environment.get(SWITCH, "auto").strip().lower()
    if choice == "off" or any(name in environment for name in WAIT_VARIABLES):
        return {}
    if choice != "short-spin" and not (machine_busy() if busy is None else busy):
        return {}
    return dict(SHORT_SPIN)


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
    return {**forwarded, **policy_environment(forwarded, busy=True)}  # a worker shares its node with others
