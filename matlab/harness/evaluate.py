"""Run a suite's tasks on one submodel through lm-evaluation-harness.

Each task runs through lm-eval's `evaluate`, set up as `simple_evaluate` sets it up (seeds,
task loading, few-shot count and seed), not through `simple_evaluate` itself: after scoring,
`simple_evaluate` records where it ran, calling `git describe` (which prints "fatal: not a git
repository" from any other directory) and torch's `collect_env` (seconds of subprocesses, per
task), and neither can be turned off. Neither record is read here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from matlab.core.submodel import Submodel
from matlab.errors import NonFiniteError
from matlab.harness.hub_data import task_manager
from matlab.harness.lm import DEFAULT_BOS_POLICY, MatformerLM
from matlab.harness.suite import Suite, SuiteError, local_task_configs


@dataclass(frozen=True)
class TaskScore:
    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int
    num_fewshot: int
    limit: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def _task_scores(results: dict, task: str, num_fewshot: int, limit: int | None) -> list[TaskScore]:
    metrics = results["results"][task]
    samples = results.get("n-samples", {}).get(task, {}).get("effective", 0)
    scores = []
    for key, value in metrics.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, _, filter_name = key.partition(",")
        stderr = metrics.get(f"{metric}_stderr,{filter_name}")
        scores.append(TaskScore(task, metric, float(value), float(stderr) if isinstance(stderr, (int, float)) else None,
                                int(samples), num_fewshot, limit))
    return scores


def _evaluate_task(lm, manager, spec: dict | str, num_fewshot: int | None, limit: int | None, seed: int) -> dict:
    """lm-eval's results for one task, with `simple_evaluate`'s set-up and defaults for the rest."""
    import random

    import numpy as np
    import torch
    from lm_eval import evaluate

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loaded = manager.load([spec])
    for task in loaded["tasks"].values():
        # simple_evaluate's rule: an explicit count replaces the task's, except a task's own 0;
        # without one, a task that names none runs zero-shot.
        if num_fewshot is not None:
            if task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    return evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0 if limit else 1000, log_samples=False,
                    fewshot_as_multiturn=True)


def evaluate_submodel(submodel: Submodel, suite: Suite, limit: int | None = None, batch_size: int = 16,
                      seed: int = 1234, bos_policy: str = DEFAULT_BOS_POLICY) -> list[TaskScore]:
    """Every metric of every task of `suite`; `limit` caps the documents per task; `bos_policy`
    decides BOS in rolling log-likelihood windows (`matlab.harness.lm`)."""
    local = local_task_configs(suite)
    # Indexing lm-eval's bundled task files takes seconds; skip it when the suite only runs local tasks.
    manager = task_manager(any(task.name not in local for task in suite.tasks))
    lm = MatformerLM(submodel, batch_size=batch_size, bos_policy=bos_policy)
    scores: list[TaskScore] = []
    for task in suite.tasks:
        task_limit = min(x for x in (limit, task.limit) if x is not None) if (limit or task.limit) else None
        spec = dict(local[task.name], num_fewshot=task.num_fewshot) if task.name in local else task.name
        if task.name not in local and task.name not in manager.all_tasks:
            raise SuiteError(f"task {task.name!r} is neither in the suite's task_dirs nor known to lm-eval")
        try:
            results = _evaluate_task(lm, manager, spec, None if task.name in local else task.num_fewshot,
                                     task_limit, seed)
        except NonFiniteError as error:
            raise NonFiniteError(f"{submodel.name}: task {task.name}: {error}") from None
        except (ConnectionError, OSError) as error:
            raise SuiteError(f"task {task.name!r} could not load its dataset ({type(error).__name__}: "
                             f"{str(error)[:200]}); tasks from the Hugging Face Hub need a network connection "
                             "or a pre-filled datasets cache") from None
        scores.extend(_task_scores(results, task.name, task.num_fewshot, task_limit))
    return scores
