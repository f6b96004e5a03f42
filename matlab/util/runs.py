"""Runs of consecutive items: equal FFN widths, adjacent layers, touching byte ranges."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def runs(items: Iterable[T], continues: Callable[[T, T], bool]) -> list[list[T]]:
    """Split `items` into maximal runs in which `continues(previous, item)` holds throughout."""
    grouped: list[list[T]] = []
    for item in items:
        if grouped and continues(grouped[-1][-1], item):
            grouped[-1].append(item)
        else:
            grouped.append([item])
    return grouped


def width_runs(widths: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive equal widths as (width, count) pairs."""
    return [(run[0], len(run)) for run in runs(widths, lambda a, b: a == b)]


def layer_spans(layers: Iterable[int]) -> str:
    """'18, 20..24' for [18, 20, 21, 22, 23, 24]; 'none' for no layers."""
    spans = runs(layers, lambda a, b: b == a + 1)
    return ", ".join(str(s[0]) if len(s) == 1 else f"{s[0]}..{s[-1]}" for s in spans) or "none"


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Join touching [start, stop) ranges: fewer, longer copies and views where possible."""
    return tuple((run[0][0], run[-1][1]) for run in runs(ranges, lambda a, b: a[1] == b[0]))
