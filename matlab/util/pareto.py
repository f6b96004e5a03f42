"""The Pareto front of points with a cost and a score: what the report draws and the search keeps."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(costs: Sequence[float], scores: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates, ordered by cost.

    A point dominates another if it costs no more and scores no worse, and is strictly better
    in one of the two. Points with identical cost and score do not dominate each other, so
    ties on the frontier are all kept; non-monotonic data (a smaller model scoring higher)
    simply removes the dominated larger ones. NaN points are never on the frontier.
    """
    if len(costs) != len(scores):
        raise ValueError(f"{len(costs)} costs but {len(scores)} scores")
    sign = 1.0 if higher_is_better else -1.0
    points = [(float(c), sign * float(s)) for c, s in zip(costs, scores)]
    front = []
    for i, (cost_i, score_i) in enumerate(points):
        if math.isnan(cost_i) or math.isnan(score_i):
            continue
        dominated = any(
            cost_j <= cost_i and score_j >= score_i and (cost_j < cost_i or score_j > score_i)
            for j, (cost_j, score_j) in enumerate(points) if j != i and not (math.isnan(cost_j) or math.isnan(score_j)))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))
