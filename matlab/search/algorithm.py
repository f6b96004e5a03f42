"""The search algorithms over the space's genes: EvoPress (the default, `matlab.search.evopress`)
and sensitivity-seeded NSGA-II, below, with the alternatives the benchmarks compare.

0. Start: a point within the budget, found by cost alone (`matlab.search.evopress.start_points`:
   a uniform walk down, else a random one), is evaluated first, so that a search cut short
   still returns a frontier.
1. Sensitivities: the full model and every single move away from it (skip one group, or
   narrow one width gene by one step) are evaluated: ~2 per layer.
2. Greedy path: assuming the moves' effects add up, moves are applied cheapest loss per
   unit of cost saved first, until the budget is met and a little below it; those points are
   evaluated.
3. NSGA-II (optuna's `NSGAIISampler`, constraint-dominance for the budget and for validity)
   refines from a first generation seeded with the path's points, until `max_evals`.

Candidates are evaluated in batches whose makeup does not depend on how they are evaluated:
all of phase 1 at once, the path's points at once, one NSGA-II generation at a time (asked
whole, evaluated, told in order), so a search spread over many workers evaluates the same
candidates in the same order as a serial one. Evaluations go through `Evaluator`, which caches
by submodel identity: a duplicate costs nothing, and a resumed search replays the same
deterministic sequence from its journal.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from matlab.search.evopress import Levels, run_evopress, start_points
from matlab.search.space import Budget, Candidate, SearchSpace

INFEASIBLE = 1e9  # the objective told to optuna for a candidate that is never evaluated
PATH_STEPS = (1.0, 0.96, 0.92, 0.88)  # path points kept: the first at or under each share of the budget


class EvaluationsExhausted(Exception):
    """`max_evals` distinct candidates have been evaluated."""


@dataclass
class Evaluator:
    """Objective values by submodel identity; counts distinct candidates up to `max_evals`.

    A strategy may also screen candidates on some of the calibration windows (`screen`, for
    EvoPress's multi-step selection): each screening costs its share of the windows of a full
    evaluation against `max_evals`, so strategies compare at equal compute."""

    measure: Callable[[list[Candidate], str], list[float]]  # (candidates, phase) -> objectives, uncached
    max_evals: int
    # (candidates, windows) -> objectives on those calibration windows only; None: no screening
    screen_measure: Callable[[list[Candidate], tuple[int, ...]], list[float]] | None = None
    windows: int = 1  # calibration windows a full evaluation reads

    def __post_init__(self) -> None:
        self.values: dict[str, float] = {}
        self.screened: dict[tuple[str, tuple[int, ...]], float] = {}
        self.screen_spent = 0.0  # screenings, in full evaluations' worth of windows

    @property
    def remaining(self) -> int:
        return int(self.max_evals - len(self.values) - self.screen_spent + 1e-9)

    def many(self, candidates: list[Candidate], phase: str) -> list[float]:
        """Objectives of `candidates`, in order: the new distinct ones are measured as one batch,
        cut to the evaluations left (raising EvaluationsExhausted once those are recorded)."""
        new: dict[str, Candidate] = {}
        for candidate in candidates:
            if candidate.submodel_id not in self.values:
                new.setdefault(candidate.submodel_id, candidate)
        batch = list(new.values())[:max(self.remaining, 0)]
        for candidate, value in zip(batch, self.measure(batch, phase) if batch else []):
            self.values[candidate.submodel_id] = value
        if len(batch) < len(new):
            raise EvaluationsExhausted
        return [self.values[candidate.submodel_id] for candidate in candidates]

    def screen(self, candidates: list[Candidate], windows: tuple[int, ...], phase: str) -> list[float]:
        """Objectives of `candidates` on calibration `windows` only (all of them: a full evaluation)."""
        if self.screen_measure is None or len(windows) >= self.windows:
            return self.many(candidates, phase)
        share = len(windows) / self.windows
        new: dict[str, Candidate] = {}
        for candidate in candidates:
            if (candidate.submodel_id, windows) not in self.screened:
                new.setdefault(candidate.submodel_id, candidate)
        affordable = int((self.max_evals - len(self.values) - self.screen_spent) / share + 1e-9)
        batch = list(new.values())[:max(affordable, 0)]
        for candidate, value in zip(batch, self.screen_measure(batch, windows) if batch else []):
            self.screened[(candidate.submodel_id, windows)] = value
        self.screen_spent += share * len(batch)
        if len(batch) < len(new):
            raise EvaluationsExhausted
        return [self.screened[(candidate.submodel_id, windows)] for candidate in candidates]

    def __call__(self, candidate: Candidate, phase: str) -> float:
        return self.many([candidate], phase)[0]


Genes = dict[str, object]  # gene name -> value: a skip (0/1), a width or a format name


def _with(genes: Genes, gene: str, value: object) -> Genes:
    return {**genes, gene: value}


def single_moves(space: SearchSpace) -> list[tuple[str, object]]:
    """(gene, new value) for every one-step move away from the full model: skip one group,
    narrow one width or one format by one step."""
    moves = []
    for gene in space.gene_names:
        if gene.startswith("skip_"):
            moves.append((gene, 1))
        elif (narrower := space.narrower(gene, space.full_genes[gene])) is not None:
            moves.append((gene, narrower))
    return moves


def greedy_path(space: SearchSpace, budget: Budget, effects: dict[tuple[str, object], tuple[float, float]],
                ) -> list[Genes]:
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


STRATEGIES = ("evopress", "seeded-nsga2", "nsga2", "greedy", "random")
# The default: EvoPress found lower KL than seeded NSGA-II at equal evaluations in every space
# on nano (depth, formats, joint; reports/benchmarks.md, `matformer bench search-peers`).
DEFAULT_STRATEGY = "evopress"


def run_algorithm(space: SearchSpace, budget: Budget, evaluate: Evaluator, seed: int,
                  strategy: str = DEFAULT_STRATEGY, population: int | None = None) -> None:
    """Evaluate candidates until `evaluate` is exhausted (or a cap on proposals is reached).

    Strategies: `evopress` (the default: EvoPress, `matlab.search.evopress`); `seeded-nsga2`
    (the former default, above; kept beside it, and for the benchmark that chose between them);
    `nsga2` (NSGA-II from a random first generation); `greedy` (from the full model, re-measure
    every one-step move and take the cheapest loss per cost saved, until nothing is left to
    take); `random` (uniformly random genes)."""
    try:
        if strategy == "evopress":
            if run_evopress(space, budget, evaluate, seed):
                return
            # The largest point fits the budget: EvoPress has no move to make (it only raises
            # what it can then repair), so the evaluations go to seeded NSGA-II, whose
            # sensitivities are then all within the budget (measured: joint space, 60% budget).
            strategy = "seeded-nsga2"
        # Every strategy first evaluates a point within the budget, found by cost alone, so that
        # a search cut short (a tight budget, few evaluations) still has a frontier.
        starts = start_points(Levels(space, budget), random.Random(seed))[:1]
        if starts:
            evaluate.many([space.decode(starts[0])], "start")
        if strategy == "greedy":
            _greedy_descent(space, budget, evaluate)
        elif strategy == "random":
            _random_search(space, budget, evaluate, seed)
        else:
            seeds = _sensitivity_seeds(space, budget, evaluate) + starts if strategy == "seeded-nsga2" else starts
            _nsga2(space, budget, evaluate, seed, seeds, population)
    except EvaluationsExhausted:
        return


def _sensitivity_seeds(space: SearchSpace, budget: Budget, evaluate: Evaluator) -> list[Genes]:
    """Phases 1 and 2: the single-move effects from the full model, then the greedy path they imply."""
    full = space.decode(space.full_genes)
    moves = [(move, space.decode(_with(space.full_genes, *move))) for move in single_moves(space)]
    moves = [(move, candidate) for move, candidate in moves if candidate.valid]
    baseline, *values = evaluate.many([full] + [candidate for _, candidate in moves], "sensitivity")
    effects = {move: (value - baseline, float(budget.cost(full) - budget.cost(candidate)))
               for (move, candidate), value in zip(moves, values)}
    seeds = greedy_path(space, budget, effects)
    evaluate.many([space.decode(genes) for genes in seeds], "path")
    return seeds + neighbours(space, budget, seeds[0]) if seeds else seeds


def neighbours(space: SearchSpace, budget: Budget, genes: Genes) -> list[Genes]:
    """Every valid point within the budget one gene away from `genes` (undoing a skip, widening
    or narrowing a width): the first generation's local neighbourhood of the path's point at
    the budget, which crossover alone rarely reaches from random parents."""
    found = []
    for gene in space.gene_names:
        for value in space.choices(gene):
            if value != genes[gene]:
                candidate = space.decode(_with(genes, gene, value))
                if candidate.valid and budget.excess(candidate) <= 0:
                    found.append(_with(genes, gene, value))
    return found


def _nsga2(space: SearchSpace, budget: Budget, evaluate: Evaluator, seed: int, seeds: list[Genes],
           population: int | None) -> None:
    """One generation at a time: ask `size` trials, evaluate the feasible ones together, tell
    all in the order asked (infeasible ones with the constraint that rules them out)."""
    import optuna

    size = population or max(8, min(32, evaluate.max_evals // 8))
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(population_size=size, seed=seed))
    for genes in seeds:
        study.enqueue_trial(genes)
    for _ in range(20 * evaluate.max_evals // size + 1):  # a cap on asks, for spaces that are mostly infeasible
        trials, candidates = [], []
        for _ in range(size):
            trial = study.ask()
            genes = {gene: trial.suggest_categorical(gene, space.choices(gene)) for gene in space.gene_names}
            trials.append(trial)
            candidates.append(space.decode(genes))
        feasible = [c for c in candidates if c.valid and budget.excess(c) <= 0]
        values = dict(zip((c.submodel_id for c in feasible), evaluate.many(feasible, "evolution")))
        for trial, candidate in zip(trials, candidates):
            excess = budget.excess(candidate) if candidate.valid else 1.0
            trial.set_constraint("valid", 0.0 if candidate.valid else 1.0)  # feasible: every constraint <= 0
            trial.set_constraint("budget", excess)
            study.tell(trial, [float(budget.cost(candidate)), values.get(candidate.submodel_id, INFEASIBLE)])


def _greedy_descent(space: SearchSpace, budget: Budget, evaluate: Evaluator) -> None:
    """From the full model, measure every one-step move (one batch per step) and take the
    cheapest loss per cost saved, until nothing is left to take."""
    genes = dict(space.full_genes)
    current = evaluate(space.decode(genes), "greedy")
    while True:
        here, options = space.decode(genes), []
        for gene in space.gene_names:
            if gene.startswith("skip_"):
                value = None if genes[gene] else 1
            else:
                value = space.narrower(gene, genes[gene])
            if value is not None:
                candidate = space.decode(_with(genes, gene, value))
                if candidate.valid and budget.cost(here) - budget.cost(candidate) > 0:
                    options.append((gene, value, candidate))
        if not options:
            return
        losses = evaluate.many([candidate for _, _, candidate in options], "greedy")
        _, gene, value, loss = min((max(loss - current, 0.0) / (budget.cost(here) - budget.cost(candidate)), gene,
                                    value, loss - current)
                                   for (gene, value, candidate), loss in zip(options, losses))
        genes, current = _with(genes, gene, value), current + loss


def _random_search(space: SearchSpace, budget: Budget, evaluate: Evaluator, seed: int, batch: int = 16) -> None:
    generator = random.Random(seed)
    for _ in range(20 * evaluate.max_evals // batch + 1):
        candidates = [space.decode({gene: generator.choice(space.choices(gene)) for gene in space.gene_names})
                      for _ in range(batch)]
        evaluate.many([c for c in candidates if c.valid and budget.excess(c) <= 0], "random")
