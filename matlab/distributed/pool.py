"""A pool of Ray actors, each holding the full model loaded once, that evaluates what it is
handed. The driver alone writes the run directory; the pool only returns results.

Scheduling is one item per actor at a time. An actor that dies (killed, out of memory, its node
lost) has its item put back and handed to another actor, and a replacement actor is started
(loading the model and replaying the setup calls) while the restart budget lasts, so nothing
is lost or evaluated twice.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matlab.errors import MatformerError

INSTALL_HINT = "pip install 'matformer-lab[distributed]'"


class DistributedError(MatformerError):
    """Ray is missing, the cluster cannot be reached, or every worker died."""


@dataclass(frozen=True)
class PoolSettings:
    """`workers` actors on the cluster at `address` ("auto": a running cluster; None: a local
    Ray instance started for this run), each with `gpus_per_worker` GPUs (None: one per worker
    on a CUDA device, none otherwise)."""

    workers: int
    address: str | None = None
    gpus_per_worker: float | None = None
    threads_per_worker: int | None = None  # torch threads in each actor (None: Ray's default)


def import_ray():
    try:
        import ray
    except ImportError:
        raise DistributedError(f"--workers needs Ray, an optional extra: {INSTALL_HINT}") from None
    return ray


def _require_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Ray waits a long time for a head it cannot reach; an explicit host:port is probed first."""
    if address in (None, "auto", "local"):
        return  # "auto" fails fast by itself when no cluster runs here
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"--ray-address {address}: write it as auto or host:port (ray://host:port for "
                               "Ray Client)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise DistributedError(f"--ray-address {address}: cannot reach the Ray cluster ({error.strerror or error}); "
                               "start it with `ray start --head` or check the address") from None


def _death_errors(ray) -> tuple[type[BaseException], ...]:
    exceptions = ray.exceptions
    return tuple(getattr(exceptions, name) for name in ("RayActorError", "WorkerCrashedError", "OutOfMemoryError",
                                                         "NodeDiedError") if hasattr(exceptions, name))


class WorkerPool:
    """Ray actors (`matlab.distributed.worker.EvaluationWorker`), each with the model loaded."""

    def __init__(self, checkpoint: str, device: str, dtype: str, settings: PoolSettings, restarts: int | None = None):
        if settings.workers < 1:
            raise DistributedError("--workers: at least 1")
        ray = self.ray = import_ray()
        self._started_here = not ray.is_initialized()
        if self._started_here:
            _require_reachable(settings.address)
            try:
                ray.init(address=settings.address, num_cpus=None if settings.address else settings.workers,
                         include_dashboard=False, log_to_driver=False)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError or its own on a bad address
                raise DistributedError(f"--ray-address {settings.address}: cannot reach the Ray cluster "
                                       f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); start it with "
                                       "`ray start --head` or check the address") from None
        from matlab.distributed.worker import EvaluationWorker

        gpus = settings.gpus_per_worker if settings.gpus_per_worker is not None else \
            (1.0 if device.startswith("cuda") else 0.0)
        # Actors the cluster cannot place would wait forever, and so would their work.
        available = ray.cluster_resources()
        for resource, each in (("CPU", 1.0), ("GPU", gpus)):
            if each and available.get(resource, 0.0) < each * settings.workers:
                if self._started_here:
                    ray.shutdown()
                raise DistributedError(f"--workers {settings.workers}: the Ray cluster has "
                                       f"{available.get(resource, 0.0):g} {resource}s, and each worker takes {each:g}; "
                                       "use fewer workers (or --gpus-per-worker)")
        self._actor_class = ray.remote(num_cpus=1, num_gpus=gpus)(EvaluationWorker)
        self._arguments = (checkpoint, device, dtype, settings.threads_per_worker)
        self._setups: list[tuple[str, tuple]] = []
        self._restarts_left = settings.workers if restarts is None else restarts
        self.actors = [self._actor_class.remote(*self._arguments) for _ in range(settings.workers)]
        self._death = _death_errors(ray)
        self.restarted = 0

    def setup(self, method: str, payload: Any) -> None:
        """Call `method(payload)` on every actor now and on every replacement later."""
        self._setups.append((method, payload))
        self.ray.get([getattr(actor, method).remote(payload) for actor in self.actors])

    def _replace(self, dead):
        """A new actor for a dead one (None once the restart budget is spent)."""
        self.actors.remove(dead)
        if self._restarts_left <= 0:
            if not self.actors:
                raise DistributedError("every worker died and the restart budget is spent; see the Ray logs "
                                       "(out of memory?), then resume the run")
            return None
        self._restarts_left -= 1
        self.restarted += 1
        actor = self._actor_class.remote(*self._arguments)
        self.ray.get([getattr(actor, method).remote(payload) for method, payload in self._setups])
        self.actors.append(actor)
        return actor

    def map(self, method: str, payloads: list[Any], on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """`method(payload)` on the actors for every payload; results in the payloads' order,
        each also passed to `on_result(index, result)` as it arrives."""
        results: list[Any] = [None] * len(payloads)
        pending, busy = deque(range(len(payloads))), {}
        idle = list(self.actors)
        while pending or busy:
            while idle and pending:
                actor, index = idle.pop(), pending.popleft()
                busy[getattr(actor, method).remote(payloads[index])] = (actor, index)
            (future,), _ = self.ray.wait(list(busy), num_returns=1)
            actor, index = busy.pop(future)
            try:
                result = self.ray.get(future)
            except self._death:  # the item goes back to the front of the queue, for another actor
                pending.appendleft(index)
                replacement = self._replace(actor)
                if replacement is not None:
                    idle.append(replacement)
                continue
            except self.ray.exceptions.RayTaskError as error:
                cause = error.as_instanceof_cause()
                raise cause if isinstance(cause, MatformerError) else DistributedError(
                    f"a worker failed on item {index}: {str(error).splitlines()[0][:300]}") from None
            results[index] = result
            if on_result:
                on_result(index, result)
            idle.append(actor)
        return results

    def call(self, method: str, payload: Any) -> Any:
        """`method(payload)` on one actor (retried on another if it dies)."""
        return self.map(method, [payload])[0]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._started_here:
            self.ray.shutdown()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
