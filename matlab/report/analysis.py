"""Pareto frontiers of a score against a cost, and what the measurements can resolve along them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matlab.util.pareto import pareto_front

# A frontier step is a cliff when it buys at least this share of the frontier's whole score
# range for at most this cost ratio; smaller steps are the frontier's ordinary slope.
CLIFF_SHARE, CLIFF_COST_RATIO = 0.3, 1.5
# Differences beyond this many combined standard errors are called significant (about 95%).
SIGNIFICANT_STDERRS = 2.0
# A config whose slowest round took this many times its fastest was not timed on a quiet
# machine (an idle CPU keeps one config's rounds within about 10% of each other).
UNSTEADY_RATIO = 1.5


@dataclass(frozen=True)
class Measured:
    """One config's score on one metric, with lm-eval's standard error where it gave one."""

    name: str
    cost: float
    score: float
    stderr: float | None = None


def combined_stderr(a: Measured, b: Measured) -> float | None:
    """The standard error of the difference of two independent scores, or None without both."""
    if a.stderr is None or b.stderr is None:
        return None
    return math.hypot(a.stderr, b.stderr)


def within_noise(a: Measured, b: Measured) -> bool | None:
    """Whether two scores differ by no more than their combined standard error (None: unknown)."""
    combined = combined_stderr(a, b)
    return None if combined is None else abs(a.score - b.score) <= combined


def significant(a: Measured, b: Measured) -> bool | None:
    combined = combined_stderr(a, b)
    return None if combined is None else abs(a.score - b.score) > SIGNIFICANT_STDERRS * combined


def frontier(points: Sequence[Measured], higher_is_better: bool = True) -> list[Measured]:
    """The points on the Pareto frontier, by cost."""
    return [points[i] for i in pareto_front([p.cost for p in points], [p.score for p in points], higher_is_better)]


def noisy_steps(points: Sequence[Measured], higher_is_better: bool = True) -> tuple[int, int]:
    """(steps within their combined stderr, steps with a stderr on both ends) along the frontier:
    where a step is noise, the frontier's order there rests on chance."""
    front = frontier(points, higher_is_better)
    verdicts = [within_noise(low, high) for low, high in zip(front, front[1:])]
    known = [verdict for verdict in verdicts if verdict is not None]
    return sum(known), len(known)


def cliff(points: Sequence[Measured], higher_is_better: bool = True, log_scale: bool = False
          ) -> tuple[Measured, Measured] | None:
    """The frontier step that buys the largest share of the frontier's score range, if it is a
    cliff (CLIFF_SHARE of the range for at most CLIFF_COST_RATIO the cost) and not noise."""
    front = frontier(points, higher_is_better)
    if len(front) < 3:  # with two points the one step is the whole range
        return None

    def scale(score: float) -> float:
        return math.log(score) if log_scale and score > 0 else score

    span = abs(scale(front[-1].score) - scale(front[0].score))
    if span == 0:
        return None
    low, high = max(zip(front, front[1:]), key=lambda pair: abs(scale(pair[1].score) - scale(pair[0].score)))
    share = abs(scale(high.score) - scale(low.score)) / span
    if share < CLIFF_SHARE or high.cost > CLIFF_COST_RATIO * low.cost or significant(low, high) is False:
        return None
    return low, high


def cheapest_equivalent(points: Sequence[Measured], higher_is_better: bool = True) -> tuple[Measured, Measured] | None:
    """(the costliest config, the cheapest config within noise of it or better), where the two
    differ; None where no stderr tells noise apart."""
    if not points:
        return None
    sign = 1.0 if higher_is_better else -1.0
    costliest = max(points, key=lambda p: (p.cost, sign * p.score))
    matches = [p for p in points if p.cost < costliest.cost and combined_stderr(p, costliest) is not None and
               (within_noise(p, costliest) or sign * (p.score - costliest.score) > 0)]
    return (costliest, min(matches, key=lambda p: (p.cost, -sign * p.score))) if matches else None


@dataclass(frozen=True)
class Timing:
    """One config's decode latency over round-robin rounds (ms per token: lower is faster)."""

    name: str
    layers: int
    weight_bytes: int
    median: float
    fastest: float
    slowest: float


def latency_doubts(timings: Sequence[Timing]) -> list[tuple[Timing, Timing, bool]]:
    """(larger, smaller, rounds overlap) for each pair where a config with more layers and more
    weights measured faster than a smaller one. Doing more work cannot be faster on the same
    machine: where the two configs' ranges over rounds overlap the order is noise; where they do
    not, the rounds disagree beyond their own spread (the machine was busy in some of them)."""
    doubts = []
    for larger in timings:
        for smaller in timings:
            if larger.layers >= smaller.layers and larger.weight_bytes > smaller.weight_bytes and \
                    larger.median < smaller.median:
                overlap = larger.slowest >= smaller.fastest
                doubts.append((larger, smaller, overlap))
    # Orders the rounds cannot explain first, then by how much faster the larger config measured.
    return sorted(doubts, key=lambda doubt: (doubt[2], doubt[0].median - doubt[1].median))


def unsteady(timings: Sequence[Timing]) -> list[Timing]:
    """The configs whose rounds disagree by more than UNSTEADY_RATIO, the worst first: the
    machine was busy in some of them, so their median is not the config's latency."""
    return sorted((t for t in timings if t.slowest > UNSTEADY_RATIO * t.fastest),
                  key=lambda t: t.slowest / t.fastest, reverse=True)
