"""Pareto frontiers on hand-made data."""

from __future__ import annotations

import math

import pytest

from matlab.harness.pareto import pareto_front


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
