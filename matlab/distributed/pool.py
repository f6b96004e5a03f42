"""A pool of Ray actors, each holding the full model loaded once, that evaluates what it is
handed. The driver alone writes the run directory; the pool only returns results.

Scheduling is one item per actor at a time. An actor that dies (killed, out of memory, its node
lost) has its item put back and handed to another actor, and a replacement actor is started
(loading the model and replaying the setup calls) while the restart budget lasts, so nothing
is lost or evaluated twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from matlab.distributed.worker import EvaluationWorker, Task
from matlab.errors import MatformerError
from matlab.util.threads import worker_environment

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
    threads_per_worker: int | None = None  # torch threads (and Ray CPUs) per actor; None: see WorkerPool


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
    """Ray actors (`matlab.distributed.worker.EvaluationWorker`), each with the model that
    `load` (a picklable function of no arguments, such as a `functools.partial` of
    `load_model`) returns, running the tasks (`Task`: task(state, payload)) they are handed."""

    def __init__(self, load: Callable[[], Any], device: str, settings: PoolSettings, restarts: int | None = None):
        if settings.workers < 1:
            raise DistributedError("--workers: at least 1")
        gpus = settings.gpus_per_worker if settings.gpus_per_worker is not None else \
            (1.0 if device.startswith("cuda") else 0.0)
        if gpus > 1 and gpus != int(gpus):
            raise DistributedError(f"--gpus-per-worker {gpus:g}: a fraction of one GPU or a whole number of GPUs")
        if device.startswith("cuda:"):
            raise DistributedError(f"--device {device}: each worker sees only the GPUs Ray gives it; use --device cuda")
        ray = self.ray = import_ray()
        self._started_here = not ray.is_initialized()
        threads = settings.threads_per_worker
        if self._started_here:
            _require_reachable(settings.address)
            local = settings.address in (None, "local")
            # A local instance gets this machine's cores, shared out between the workers; without
            # "local", Ray would join a cluster named by RAY_ADDRESS or already running here.
            if local and threads is None:
                threads = max(1, (os.cpu_count() or 1) // settings.workers)
            try:
                ray.init(address=settings.address or "local",
                         num_cpus=settings.workers * threads if local else None,
                         include_dashboard=False, log_to_driver=False)
            except Exception as error:  # Ray raises ConnectionError, RuntimeError or its own on a bad address
                cause = f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                raise DistributedError(f"could not start Ray on this machine {cause}" if local else
                                       f"--ray-address {settings.address}: cannot reach the Ray cluster {cause}; start "
                                       "it with `ray start --head` or check the address") from None
        # Each worker asks Ray for its threads as CPUs (Ray then sets OMP_NUM_THREADS to match)
        # and gives torch the same number: one CPU per worker unless more are asked for.
        self.threads = threads or 1
        self._need = {"CPU": float(self.threads), "GPU": gpus}
        # Actors the cluster cannot place would wait forever, and so would their work.
        available = ray.cluster_resources()
        for resource, each in self._need.items():
            if each and available.get(resource, 0.0) < each * settings.workers:
                self._shutdown()
                raise DistributedError(f"--workers {settings.workers}: the Ray cluster has "
                                       f"{available.get(resource, 0.0):g} {resource}s, and each worker takes {each:g}; "
                                       "use fewer workers (or --gpus-per-worker, --threads-per-worker)")
        # The thread policy of this process (`matlab.util.threads`) reaches workers on other nodes too.
        environment = worker_environment()
        self._actor_class = ray.remote(num_cpus=self.threads, num_gpus=gpus,
                                       **({"runtime_env": {"env_vars": environment}} if environment else {})
                                       )(EvaluationWorker)
        self._arguments = (load, self.threads)
        self._setups: list[tuple[Task, Any]] = []  # (task, the payload in the object store)
        self._restarts_left = settings.workers if restarts is None else restarts
        self._death = _death_errors(ray)
        self.restarted = 0
        self.actors = [self._actor_class.remote(*self._arguments) for _ in range(settings.workers)]
        try:
            self._ready(self.actors)
        except BaseException:
            self.close()
            raise

    def _ready(self, actors: list) -> None:
        """Wait until `actors` have loaded the model; a load that fails (a bad checkpoint path
        on a node, a device the worker cannot see) is one line with its cause, not a death."""
        try:
            self.ray.get([actor.pid.remote() for actor in actors])
        except self.ray.exceptions.RayActorError as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]  # a traceback: its cause last
            raise DistributedError(f"a worker could not load the model: {(lines or [type(error).__name__])[-1][:300]}"
                                   ) from None

    def _shutdown(self) -> None:
        if self._started_here:
            self.ray.shutdown()

    def setup(self, task: Task, payload: Any) -> None:
        """Run `task` with `payload` on every actor now and on every replacement later (the
        payload is put in Ray's object store once); a set-up task stores what later tasks need
        in the actor's state."""
        reference = self.ray.put(payload)
        self._setups.append((task, reference))
        self.ray.get([actor.run.remote(task, reference) for actor in self.actors])

    def _replace(self, dead):
        """A new actor for a dead one: None once the restart budget is spent, or when the
        cluster has lost the room for it (a node gone), in which case the work goes on with
        fewer workers."""
        self.actors.remove(dead)
        with contextlib.suppress(Exception):  # an unreachable actor still holds its GPU
            self.ray.kill(dead, no_restart=True)
        total = self.ray.cluster_resources()
        room = all(total.get(resource, 0.0) >= each * (len(self.actors) + 1)
                   for resource, each in self._need.items() if each)
        if self._restarts_left <= 0 or not room:
            if not self.actors:
                raise DistributedError("every worker died and " + ("the restart budget is spent" if room else
                                       "the cluster has no room left for another") + "; see the Ray logs "
                                       "(out of memory? a node lost?), then resume the run")
            return None
        self._restarts_left -= 1
        self.restarted += 1
        actor = self._actor_class.remote(*self._arguments)
        self._ready([actor])
        self.ray.get([actor.run.remote(task, payload) for task, payload in self._setups])
        self.actors.append(actor)
        return actor

    def map(self, task: Task, payloads: list[Any], on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """`task` on the actors for every payload; results in the payloads' order, each also
        passed to `on_result(index, result)` as it arrives."""
        results: list[Any] = [None] * len(payloads)
        pending, busy = deque(range(len(payloads))), {}
        idle = list(self.actors)
        while pending or busy:
            while idle and pending:
                actor, index = idle.pop(), pending.popleft()
                busy[actor.run.remote(task, payloads[index])] = (actor, index)
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

    def call(self, task: Task, payload: Any) -> Any:
        """`task` with `payload` on one actor (retried on another if it dies)."""
        return self.map(task, [payload])[0]

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []
        self._shutdown()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
