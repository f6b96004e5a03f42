"""Figures for reports, rendered with matplotlib to SVG bytes."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from matlab.harness.pareto import pareto_front  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})


def _svg(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


# Candidate label positions (offset in points from the marker), tried in order.
_OFFSETS = ((4, 3), (4, -9), (-4, 3), (-4, -9), (4, 12), (4, -18), (-4, 12), (-4, -18), (4, 21), (4, -27))
_LABEL_SIZE = 7


def _place_labels(axes, labels, xs, ys, placed: list, color: str) -> None:
    """Label every point at the first candidate offset whose text box overlaps no label placed
    so far (a small greedy placement; matplotlib has none built in)."""
    figure = axes.figure
    axes.autoscale_view()
    scale = figure.dpi / 72  # points to pixels
    for label, x, y in sorted(zip(labels, xs, ys), key=lambda item: (item[1], item[2])):
        px, py = axes.transData.transform((x, y))
        width, height = 0.6 * _LABEL_SIZE * len(label) * scale, _LABEL_SIZE * scale
        for dx, dy in _OFFSETS:
            left = px + dx * scale if dx > 0 else px + dx * scale - width
            box = (left, py + dy * scale, left + width, py + dy * scale + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=_LABEL_SIZE, color=color,
                      ha="left" if dx > 0 else "right")


def tradeoff_plot(labels: list[str], costs: list[float], scores: list[float], *, cost_label: str, score_label: str,
                  higher_is_better: bool = True, reference: tuple[list[float], list[float], list[str]] | None = None,
                  compare: tuple[list[float], list[float], list[str], str] | None = None,
                  found: tuple[list[float], list[float], list[str]] | None = None,
                  budget: float | None = None, published: list[tuple[float, float, str]] | None = None) -> bytes:
    """Score against cost, every point labelled, the Pareto frontier (of the configs and the
    configs a search found, together) drawn and highlighted."""
    figure, axes = plt.subplots(figsize=(8.4, 5.0))
    all_costs = costs + (found[0] if found else [])
    all_scores = scores + (found[1] if found else [])
    front = pareto_front(all_costs, all_scores, higher_is_better)
    axes.scatter(costs, scores, color="#9aa5b1", zorder=2, label="hand-written configs" if found else "configs")
    if found:
        axes.scatter(found[0], found[1], marker="*", s=90, color="#d98b06", zorder=5, label="found by search")
    axes.plot([all_costs[i] for i in front], [all_scores[i] for i in front], "-", color="#d64545", zorder=3,
              label="Pareto frontier")
    axes.scatter([all_costs[i] for i in front], [all_scores[i] for i in front], color="#d64545", s=14, zorder=4)
    if compare:
        axes.scatter(compare[0], compare[1], marker="x", color="#3e6fb0", zorder=4, label=compare[3])
    if budget is not None:
        axes.axvline(budget, color="#d98b06", linestyle="--", linewidth=1, label="search budget")
    placed: list[tuple[float, float, float, float]] = []
    _place_labels(axes, labels, costs, scores, placed, "#222222")
    if found:
        _place_labels(axes, found[2], found[0], found[1], placed, "#a86a00")
    if compare:
        _place_labels(axes, compare[2], compare[0], compare[1], placed, "#3e6fb0")
    if reference:  # the same metric as measured, stated per config by the configs' source
        axes.scatter(reference[0], reference[1], marker="^", color="#2f8a57", zorder=4, label="stated by source")
    if published:
        axes.scatter([x for x, _, _ in published], [y for _, y, _ in published], marker="D", s=40,
                     facecolors="none", edgecolors="#7b3fa0", linewidths=1.5, zorder=5, label="published")
        _place_labels(axes, [label for _, _, label in published], [x for x, _, _ in published],
                      [y for _, y, _ in published], placed, "#7b3fa0")
    axes.set_xlabel(cost_label)
    axes.set_ylabel(score_label)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=7)
    return _svg(figure)


def search_plot(costs: list[float], values: list[float], front: list[int], *, cost_label: str, objective: str,
                budget: float) -> bytes:
    """Every candidate a search evaluated (objective against cost), its Pareto set and the budget."""
    figure, axes = plt.subplots(figsize=(8.4, 5.0))
    axes.scatter(costs, values, s=10, color="#bcccdc", zorder=2, label="evaluated candidates")
    axes.plot([costs[i] for i in front], [values[i] for i in front], "-*", color="#d98b06", zorder=3,
              label="found frontier (within budget)")
    axes.axvline(budget, color="#d98b06", linestyle="--", linewidth=1, label="budget")
    if objective == "kl":  # from 0 (the full model) over several decades
        axes.set_yscale("symlog", linthresh=1e-3)
        axes.set_ylim(0, max(values) * 1.5)  # rounding can put the full model a hair below zero
    axes.set_xlabel(cost_label)
    axes.set_ylabel(f"{objective} (calibration text)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=7)
    return _svg(figure)


def width_heatmap(names: list[str], num_layers: int, layers_skipped: list[list[int]],
                  ffn_widths: list[list[int]], base_width: int) -> bytes:
    """Per-layer FFN width (as a fraction of the base) of every config; skipped layers hatched."""
    grid = np.full((len(names), num_layers), math.nan)
    for row, (skipped, widths) in enumerate(zip(layers_skipped, ffn_widths)):
        kept = [layer for layer in range(num_layers) if layer not in set(skipped)]
        for layer, width in zip(kept, widths):
            grid[row, layer] = width / base_width
    figure, axes = plt.subplots(figsize=(max(6.0, num_layers * 0.22), 0.3 * len(names) + 1.2))
    axes.set_facecolor("#eeeeee")
    image = axes.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    for row, skipped in enumerate(layers_skipped):
        for layer in skipped:
            axes.add_patch(plt.Rectangle((layer - 0.5, row - 0.5), 1, 1, fill=False, hatch="xxx", color="#555555"))
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=6)
    axes.set_xlabel("layer of the base model (hatched: skipped)")
    figure.colorbar(image, ax=axes, label="FFN width / base width", fraction=0.03)
    return _svg(figure)
