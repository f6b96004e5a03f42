"""EvoPress (Sieberling, Kuznedelev, Kurtic, Alistarh: "EvoPress: Accurate Dynamic Model
Compression via Evolutionary Search", ICML 2025) as a strategy of `matformer search`
(`--strategy evopress`), written from the paper's description.

The method: a (1 + lambda) evolutionary search with one parent. Each generation makes lambda
offspring by a level-switch mutation that keeps the compression target (some units one level
larger, others one level smaller), then selects in stages: all offspring are ranked on a few
calibration tokens, the best few on more, and the last stage, where the parent rejoins, on the
most; the winner is the next parent. Its authors show that error is not additive over layers,
so that a search beats per-layer scores, and that this one converges fast.

Here the units are the genes of the project's space (`matlab.search.space`): one skip per
skippable layer, one FFN width per layer (or one for a runtime that builds every layer at one
width), and with `--formats` a weight format per layer and tensor group plus the token and
per-layer embedding tables; a unit's levels are its values, largest model first. Where this
departs from the paper, and why:

- Budget kept by raise-then-repair, not by exact swaps. The paper's swaps keep the target
  exactly because its levels cost the same in every unit (a block dropped for a block kept;
  equal-size steps of a sparsity or bit-width database). Here units cost different amounts and
  interact (a skip zeroes a layer's width and format costs), so no exact swap exists: a child
  raises 1-3 units (fewer more often: min of two draws from 1..3, as in the authors' code), then
  lowers random other units one level at a time until it fits the budget, and is rejected if that
  took more than 10 level changes or gave back more than 1.25x the cost it took (the guards of the
  authors' code for unequal units), or is invalid, or is the parent, a sibling or a candidate
  already measured (`Evaluator` caches by submodel, so a repeat would cost nothing and teach
  nothing). Every child fits the budget.
- A layer brought back from a skip comes back at its narrowest width and format (the smallest
  step from "skipped"), so that one level stays a small change.
- Stages are calibration windows, not fresh random token batches: stage 1 reads one window in
  eight (at least one), rotating with the generation; the last stage reads every window, which
  is exactly the search's objective, so the last stage's values are ordinary journal records,
  comparable across strategies and kept on the frontier. Rotation instead of random draws keeps
  a run deterministic and resumable from its journal (the screenings are recomputed on resume).
- Scale: the authors' quantization runs use 128 offspring, survivors 16, 4, 1 on 2K, 16K and
  131K tokens, for 150 generations of about 9 full evaluations each. That is thousands of
  evaluations; here the search gets `--max-evals` (a screening costs its share of windows), so
  lambda is scaled to about an eighth of the evaluations (8 to 32), with two stages: lambda on
  one window in eight, a quarter of them on all windows. With fewer than two windows there is
  one stage: every offspring on all of them.
- The start: the authors start uniform at the target, or (between levels) from the level above
  walked down at random until it fits, and pick the best of those. Here: the first point of a
  uniform walk (every format one level down, then every width) that fits, and 8 random
  walk-downs (skips allowed) from the last uniform point above the budget; the best after the
  stages is the first parent. Nothing outside the budget is ever evaluated.
- Output: the project's Pareto frontier of every full evaluation, not one point at the target;
  EvoPress's evaluations cluster just under the budget, so its frontier below it is thin.
- Where the largest point fits the budget, EvoPress has no move (nothing can be raised): the
  search then spends its evaluations as seeded NSGA-II does (`matlab.search.algorithm`), whose
  every sensitivity is then within the budget. Measured on nano's joint space at 60% of the
  bf16 bytes: EvoPress alone stopped after one evaluation (the full model at q8_0).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from matlab.search.space import Budget, SearchSpace

Genes = dict[str, object]
MAX_CHANGES = 10  # level changes a child may take (the authors' guard)
MIN_GIVE_BACK = 0.8  # a child's cost added over cost removed: at least this (the authors' guard)
INITIAL_WALKS = 8
ATTEMPTS = 50  # tries to draw one acceptable child before a generation goes on with fewer


@dataclass(frozen=True)
class EvoPressSettings:
    offspring: int  # lambda
    stages: tuple[tuple[int, int], ...]  # (survivors, windows read), the last reading every window

    @classmethod
    def scaled(cls, max_evals: int, windows: int) -> EvoPressSettings:
        """The published settings scaled to `max_evals` evaluations on `windows` calibration windows."""
        offspring = max(8, min(32, max_evals // 8))
        if windows < 2:
            return cls(offspring, ((1, windows),))
        return cls(offspring, ((max(2, offspring // 4), max(1, windows // 8)), (1, windows)))


def _layer_of(gene: str) -> int | None:
    tail = gene.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


class Levels:
    """The space's genes as units with levels (0: largest), and the moves between levels."""

    def __init__(self, space: SearchSpace, budget: Budget):
        self.space, self.budget = space, budget
        self.units = list(space.gene_names)
        self.skippable = {_layer_of(gene) for gene in self.units if gene.startswith("skip_")}

    def skipped(self, genes: Genes) -> set[int]:
        return {layer for layer in self.skippable if genes[f"skip_{layer}"]}

    def active(self, genes: Genes) -> list[str]:
        """Units that change the model: a skipped layer's width and formats do not."""
        skipped = self.skipped(genes)
        return [gene for gene in self.units if gene.startswith("skip_") or _layer_of(gene) not in skipped]

    def level(self, genes: Genes, gene: str) -> int:
        return self.space.choices(gene).index(genes[gene])

    def can_move(self, genes: Genes, gene: str, step: int) -> bool:
        return 0 <= self.level(genes, gene) + step < len(self.space.choices(gene))

    def moved(self, genes: Genes, gene: str, step: int) -> Genes:
        """`genes` with `gene` one level up (step -1, larger) or down (+1)."""
        new = {**genes, gene: self.space.choices(gene)[self.level(genes, gene) + step]}
        if gene.startswith("skip_") and step < 0:  # back from a skip: at its narrowest width and formats
            layer = _layer_of(gene)
            for other in self.units:
                if other != gene and _layer_of(other) == layer:
                    new[other] = self.space.choices(other)[-1]
        return new

    def cost(self, genes: Genes) -> int:
        return self.budget.cost(self.space.decode(genes))

    def fits(self, genes: Genes) -> bool:
        candidate = self.space.decode(genes)
        return candidate.valid and self.budget.excess(candidate) <= 0


def mutate(levels: Levels, parent: Genes, rng: random.Random, known: set[str]) -> Genes | None:
    """One child of `parent` within the budget (raise 1-3 units, repair by lowering others), or
    None when no acceptable child was drawn in ATTEMPTS tries. `known`: submodel ids not to repeat."""
    for _ in range(ATTEMPTS):
        genes, raised, changes, added, removed = dict(parent), set(), 0, 0, 0
        for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
            options = [gene for gene in levels.active(genes) if levels.can_move(genes, gene, -1)]
            if not options:
                break
            gene = rng.choice(options)
            before = levels.cost(genes)
            genes = levels.moved(genes, gene, -1)
            added += levels.cost(genes) - before
            raised.add(gene)
            changes += 1
        if not raised:
            return None  # the parent is the full model: nothing to raise
        while changes <= MAX_CHANGES and levels.budget.excess(levels.space.decode(genes)) > 0:
            options = [gene for gene in levels.active(genes) if gene not in raised and levels.can_move(genes, gene, 1)]
            if not options:
                break
            gene = rng.choice(options)
            before = levels.cost(genes)
            genes = levels.moved(genes, gene, 1)
            removed += before - levels.cost(genes)
            changes += 1
        candidate = levels.space.decode(genes)
        if changes > MAX_CHANGES or not levels.fits(genes) or candidate.submodel_id in known:
            continue
        if removed > 0 and added < MIN_GIVE_BACK * removed:
            continue
        return genes
    return None


def start_points(levels: Levels, rng: random.Random) -> list[Genes]:
    """Points within the budget, found by cost alone: the first uniform point that fits
    (every format one level down at a time, then every width), and random walk-downs from the
    last uniform point above the budget (skips allowed)."""
    space = levels.space
    genes = dict(space.full_genes)
    above, found = genes, []
    for prefix in ("format_", "width"):
        units = [gene for gene in space.gene_names if gene.startswith(prefix)]
        while not levels.fits(genes) and any(levels.can_move(genes, gene, 1) for gene in units):
            above = genes
            genes = {**genes, **{gene: space.narrower(gene, genes[gene]) or genes[gene] for gene in units}}
        if levels.fits(genes):
            found.append(genes)
            break
    if not levels.fits(above):
        for _ in range(INITIAL_WALKS):
            walk = dict(above)
            while not levels.fits(walk):
                options = [gene for gene in levels.active(walk) if levels.can_move(walk, gene, 1)]
                if not options:
                    break
                walk = levels.moved(walk, rng.choice(options), 1)
            if levels.fits(walk):
                found.append(walk)
    unique = {}
    for point in found:
        unique.setdefault(space.decode(point).submodel_id, point)
    return list(unique.values())


def select(levels: Levels, evaluate, pool: list[Genes], stages: tuple[tuple[int, int], ...], generation: int,
           parent: Genes | None, phase: str) -> Genes:
    """Multi-step selection: each stage ranks the remaining points on its windows (the last on
    all, with the parent rejoining) and keeps its survivors; the best of the last stage wins."""
    windows_total = stages[-1][1]
    remaining = pool
    for survivors, count in stages[:-1]:
        windows = tuple(sorted({(generation * count + offset) % windows_total for offset in range(count)}))
        candidates = [levels.space.decode(genes) for genes in remaining]
        values = evaluate.screen(candidates, windows, phase)
        ranked = sorted(zip(values, (c.submodel_id for c in candidates), range(len(remaining))))
        remaining = [remaining[index] for _, _, index in ranked[:survivors]]
    if parent is not None:
        remaining = remaining + [parent]
    candidates = [levels.space.decode(genes) for genes in remaining]
    values = evaluate.many(candidates, phase)
    _, _, index = min(zip(values, (c.submodel_id for c in candidates), range(len(remaining))))
    return remaining[index]


def run_evopress(space: SearchSpace, budget: Budget, evaluate, seed: int) -> bool:
    """Generations until the evaluations run out (`EvaluationsExhausted`, caught by the caller)
    or no child can be drawn. Returns False where the largest point fits the budget: nothing can
    be raised, so EvoPress has no move (the caller may spend the evaluations otherwise)."""
    levels = Levels(space, budget)
    settings = EvoPressSettings.scaled(evaluate.max_evals, evaluate.windows)
    rng = random.Random(seed)
    starts = start_points(levels, rng)
    if not starts:
        return True
    if levels.fits(space.full_genes):
        return False
    parent = select(levels, evaluate, starts, settings.stages, 0, None, "evopress-start")
    generation = 1
    while True:
        known = set(evaluate.values) | {space.decode(parent).submodel_id}
        children: list[Genes] = []
        for _ in range(settings.offspring):
            child = mutate(levels, parent, rng, known)
            if child is None:
                continue
            known.add(space.decode(child).submodel_id)
            children.append(child)
        if not children:
            return True
        parent = select(levels, evaluate, children, settings.stages, generation, parent, "evopress")
        generation += 1
