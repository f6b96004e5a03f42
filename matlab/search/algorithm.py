"""The search algorithm: sensitivity-seeded NSGA-II over the space's genes.

1. Sensitivities: the full model and every single move away from it (skip one group, or
   narrow one width gene by one step) are evaluated: ~2 per layer.
2. Greedy path: assuming the moves' effects add up, moves are applied cheapest loss per
   unit of cost saved first, until the budget is met and a little below it; those points are
   evaluated.
3. NSGA-II (optuna's `NSGAIISampler`, constraint-dominance for the budget and for validity)
   refines from a first generation seeded with the path's points, until `max_evals`.

Evaluations go through `Evaluator`, which caches by submodel identity: a duplicate costs
nothing, and a resumed search replays the same deterministic sequence from its journal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from matlab.search.space import Budget, Candidate, SearchSpace

INFEASIBLE = 1e9  # the objective told to optuna for a candidate that is never evaluated
PATH_STEPS = (1.0, 0.96, 0.92, 0.88)  # path points kept: the first at or under each share of the budget


class EvaluationsExhausted(Exception):
    """`max_evals` distinct candidates have been evaluated."""


@dataclass
class Evaluator:
    """Objective values by submodel identity; counts distinct candidates up to `max_evals`."""

    measure: Callable[[Candidate, str], float]  # (candidate, phase) -> objective, uncached
    max_evals: int

    def __post_init__(self) -> None:
        self.values: dict[str, float] = {}

    @property
    def remaining(self) -> int:
        return self.max_evals - len(self.values)

    def __call__(self, candidate: Candidate, phase: str) -> float:
        if candidate.submodel_id not in self.values:
            if self.remaining <= 0:
                raise EvaluationsExhausted
            self.values[candidate.submodel_id] = self.measure(candidate, phase)
        return self.values[candidate.submodel_id]


def _with(genes: dict[str, int], gene: str, value: int) -> dict[str, int]:
    return {**genes, gene: value}


def _narrower(space: SearchSpace, width: int) -> int | None:
    smaller = [w for w in space.widths if w < width]
    return smaller[0] if smaller else None


def single_moves(space: SearchSpace) -> list[tuple[str, int]]:
    """(gene, new value) for every one-step move away from the full model."""
    moves = []
    for gene in space.gene_names:
        if gene.startswith("skip_"):
            moves.append((gene, 1))
        elif (narrower := _narrower(space, space.full_genes[gene])) is not None:
            moves.append((gene, narrower))
    return moves


def greedy_path(space: SearchSpace, budget: Budget, effects: dict[tuple[str, int], tuple[float, float]],
                ) -> list[dict[str, int]]:
    """Genes along the cheapest-loss-per-cost path from the full model down past the budget,
    by the measured single-move effects ((objective increase, cost saved) per move)."""
    genes, points, targets = dict(space.full_genes), [], list(PATH_STEPS)
    order = sorted(effects, key=lambda move: (max(effects[move][0], 0.0) / max(effects[move][1], 1.0), move))
    for gene, value in order:
        if genes[gene] == value:
            continue
        trial = _with(genes, gene, value)
        candidate = space.decode(trial)
        if not candidate.valid:
            continue
        genes = trial
        while targets and budget.excess(candidate) <= targets[0] - 1.0:
            points.append(dict(genes))
            targets.pop(0)
        if not targets:
            break
    return points


def run_algorithm(space: SearchSpace, budget: Budget, evaluate: Evaluator, seed: int,
                  population: int | None = None) -> None:
    """Evaluate candidates until `evaluate` is exhausted (or the trial cap is reached)."""
    import optuna

    try:
        full = space.decode(space.full_genes)
        baseline = evaluate(full, "sensitivity")
        effects = {}
        for gene, value in single_moves(space):
            candidate = space.decode(_with(space.full_genes, gene, value))
            if candidate.valid:
                effects[(gene, value)] = (evaluate(candidate, "sensitivity") - baseline,
                                          float(budget.cost(full) - budget.cost(candidate)))
        seeds = greedy_path(space, budget, effects)
        for genes in seeds:
            evaluate(space.decode(genes), "path")
    except EvaluationsExhausted:
        return
    size = population or max(8, min(32, evaluate.max_evals // 8))
    sampler = optuna.samplers.NSGAIISampler(population_size=size, seed=seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for genes in seeds:
        study.enqueue_trial(genes)
    for _ in range(20 * evaluate.max_evals):  # a cap on asks, for spaces that are mostly infeasible
        trial = study.ask()
        genes = {gene: trial.suggest_categorical(gene, space.choices(gene)) for gene in space.gene_names}
        candidate = space.decode(genes)
        excess = budget.excess(candidate) if candidate.valid else 1.0
        trial.set_constraint("valid", 0.0 if candidate.valid else 1.0)  # feasible: every constraint <= 0
        trial.set_constraint("budget", excess)
        if not candidate.valid or excess > 0:
            study.tell(trial, [float(budget.cost(candidate)), INFEASIBLE])
            continue
        try:
            value = evaluate(candidate, "evolution")
        except EvaluationsExhausted:
            return
        study.tell(trial, [float(budget.cost(candidate)), value])
