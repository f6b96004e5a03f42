"""Pareto frontiers on hand-made data."""

from __future__ import annotations

import math

import pytest

from matlab.report.analysis import (
    Measured,
    Timing,
    cheapest_equivalent,
    cliff,
    combined_stderr,
    latency_doubts,
    noisy_steps,
    significant,
    within_noise,
)
from matlab.util.pareto import pareto_front


def test_simple_front():
    costs = [1, 2, 3, 4]
    scores = [0.1, 0.5, 0.4, 0.9]
    assert pareto_front(costs, scores) == [0, 1, 3]  # 3 costs more than 2 and scores less


def test_ties_are_all_kept_and_equal_cost_keeps_best():
    costs = [1, 1, 2, 2, 3]
    scores = [0.5, 0.5, 0.7, 0.6, 0.7]
    # the two identical (1, 0.5) points tie; (2, 0.6) loses to (2, 0.7); (3, 0.7) is dominated by (2, 0.7)
    assert pareto_front(costs, scores) == [0, 1, 2]


def test_non_monotonic_like_google_table():
    # Google's table: E3.39B (63.0) and E3.59B (63.4) beat the full E4B (62.3).
    names = ["E2B", "E2.98B", "E3.39B", "E3.59B", "E3.79B-layer", "E4B"]
    costs = [1.91, 2.98, 3.39, 3.59, 3.79, 3.98]
    scores = [50.9, 59.5, 63.0, 63.4, 63.4, 62.3]
    assert [names[i] for i in pareto_front(costs, scores)] == ["E2B", "E2.98B", "E3.39B", "E3.59B"]


def test_lower_is_better_and_nan():
    costs = [1, 2, 3, float("nan")]
    perplexities = [30.0, 20.0, 25.0, 1.0]
    assert pareto_front(costs, perplexities, higher_is_better=False) == [0, 1]
    assert pareto_front([], []) == []
    with pytest.raises(ValueError, match="2 costs but 1 scores"):
        pareto_front([1, 2], [math.pi])


def _measured(*points):
    return [Measured(name, cost, score, stderr) for name, cost, score, stderr in points]


def test_noise_is_the_combined_stderr():
    a, b, c = _measured(("a", 1, 0.683, 0.015), ("b", 2, 0.690, 0.014), ("c", 3, 0.75, None))
    assert combined_stderr(a, b) == pytest.approx(math.hypot(0.015, 0.014))
    assert within_noise(a, b) and significant(a, b) is False
    assert within_noise(a, c) is None and significant(a, c) is None
    assert significant(a, Measured("d", 4, 0.9, 0.01))


def test_a_cliff_is_the_largest_step_and_only_a_steep_one():
    points = _measured(("s", 1.0, 0.08, 0.01), ("m", 1.5, 0.19, 0.012), ("f", 2.06, 0.43, 0.015),
                       ("e2b", 2.38, 0.68, 0.015), ("e4b", 5.05, 0.69, 0.014))
    low, high = cliff(points)
    assert (low.name, high.name) == ("f", "e2b")
    # A steady climb (every step a fifth of the range) has no cliff; neither has a step within noise.
    assert cliff(_measured(*((str(i), 1 + i, 0.1 * i, 0.01) for i in range(6)))) is None
    assert cliff(_measured(("a", 1, 0.5, 0.2), ("b", 1.1, 0.9, 0.2), ("c", 1.2, 0.95, 0.2))) is None
    # Perplexity: lower is better, and steps are measured on the log scale the plot uses.
    perplexities = _measured(("s", 0.75, 216.7, None), ("m", 1.07, 12.9, None), ("l", 1.24, 11.1, None),
                             ("e2b", 2.38, 4.1, None))
    assert [p.name for p in cliff(perplexities, higher_is_better=False, log_scale=True)] == ["s", "m"]


def test_the_cheapest_equivalent_and_noisy_steps():
    points = _measured(("e2b", 2.38, 0.683, 0.015), ("l2", 3.67, 0.685, 0.015), ("e4b", 5.05, 0.690, 0.014),
                       ("s1", 4.28, 0.31, 0.014), ("f", 2.06, 0.44, 0.015))
    costly, cheap = cheapest_equivalent(points)
    assert (costly.name, cheap.name) == ("e4b", "e2b")
    assert noisy_steps(points) == (2, 3)  # e2b -> l2 -> e4b are noise; f -> e2b is not
    assert cheapest_equivalent(_measured(("a", 1, 0.5, None), ("b", 2, 0.6, None))) is None
    assert cheapest_equivalent(_measured(("a", 1, 0.2, 0.01), ("b", 2, 0.6, 0.01))) is None


def test_latency_doubts_name_larger_configs_timed_faster():
    e2b = Timing("nano-E2B", 15, 10_164_608, 14.5, 13.9, 19.0)
    l4 = Timing("nano-L4", 20, 16_271_936, 12.5, 12.2, 12.8)  # more work, faster, rounds apart: busy machine
    l3 = Timing("nano-L3", 20, 17_000_000, 14.0, 12.0, 20.0)  # more work, faster, rounds overlap: noise
    e4b = Timing("nano-E4B", 20, 20_990_528, 21.3, 18.3, 22.7)
    doubts = latency_doubts([e2b, l4, l3, e4b])
    assert [(a.name, b.name, overlap) for a, b, overlap in doubts] == [
        ("nano-L4", "nano-E2B", False), ("nano-L3", "nano-E2B", True)]
    assert latency_doubts([e2b, e4b]) == []
