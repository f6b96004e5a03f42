"""Figures for reports, rendered with matplotlib to SVG bytes.

Points carry short keys (the numbers of the report's tables), never config names: names of
two dozen configs cannot sit beside their points without colliding, keys can, and where even
a key finds no free place it is listed under the plot instead of drawn over another.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from matlab.util.pareto import pareto_front

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "matformer-lab"})
FIGURE_SIZE = (8.8, 4.8)
KEY_SIZE = 7.5
FRONTIER_COLOR = "#d64545"


@dataclass(frozen=True)
class Mark:
    """One point: its key (the table's number; '' for none), cost and score, the score's
    standard error and the cost's range (latency over rounds) where known."""

    key: str
    cost: float
    score: float
    score_err: float | None = None
    cost_range: tuple[float, float] | None = None
    doubtful: bool = False


@dataclass(frozen=True)
class Series:
    label: str
    kind: str  # one of STYLES
    marks: list[Mark]


# kind: (marker, size, face, edge, key colour); "configs" and "found" make the frontier.
STYLES = {"configs": ("o", 24, "#9aa5b1", "#52606d", "#1f2933"),
          "found": ("*", 110, "#f0a818", "#a86a00", "#8a5600"),
          "compare": ("X", 46, "#3e6fb0", "#1f4a80", "#1f4a80"),
          "stated": ("^", 30, "#2f8a57", "#2f8a57", "#2f8a57"),
          "published": ("D", 44, "none", "#7b3fa0", "#7b3fa0"),
          "candidates": ("o", 10, "#bcccdc", "#bcccdc", "#52606d")}
FRONTIER_KINDS = ("configs", "found")


def _svg(figure) -> bytes:
    buffer = io.BytesIO()
    # No date and a fixed id salt: the same data gives the same bytes (a committed report diffs cleanly).
    with matplotlib.rc_context({"svg.hashsalt": "matformer-lab"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    return buffer.getvalue()


def _finite(mark: Mark) -> bool:
    return math.isfinite(mark.cost) and math.isfinite(mark.score)


def _draw(axes, series: Series) -> None:
    marker, size, face, edge, _ = STYLES[series.kind]
    marks = [mark for mark in series.marks if _finite(mark)]
    if not marks:
        return
    xs, ys = [m.cost for m in marks], [m.score for m in marks]
    if any(m.score_err for m in marks) or any(m.cost_range for m in marks):
        yerr = [m.score_err or 0.0 for m in marks]
        xerr = np.array([[m.cost - m.cost_range[0], m.cost_range[1] - m.cost] if m.cost_range else [0.0, 0.0]
                         for m in marks]).T
        axes.errorbar(xs, ys, yerr=yerr, xerr=xerr, fmt="none", ecolor=edge, elinewidth=0.8, capsize=1.5, alpha=0.55,
                      zorder=2)
    axes.scatter(xs, ys, marker=marker, s=size, facecolors=face, edgecolors=edge, linewidths=0.8, zorder=4,
                 label=series.label)


def _log_axis(axis) -> None:
    """A log axis labelled in plain numbers (1, 2, 5, 10, 20, ...), not powers of ten."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _segment_hits(box, start, end) -> bool:
    """Whether the segment from `start` to `end` crosses `box` (Liang-Barsky clipping)."""
    (x, y), (dx, dy) = start, (end[0] - start[0], end[1] - start[1])
    low, high = 0.0, 1.0
    for step, room in ((-dx, x - box.x0), (dx, box.x1 - x), (-dy, y - box.y0), (dy, box.y1 - y)):
        if step == 0:
            if room < 0:
                return False
            continue
        bound = room / step
        low, high = (max(low, bound), high) if step < 0 else (low, min(high, bound))
        if low > high:
            return False
    return True


# Where a key may go, in points from its marker: near first, then further out on a leader line.
_RINGS = (6, 11, 17, 25, 35, 47)
_ANGLES = tuple(range(0, 360, 45))


def _place_keys(axes, labelled: list[tuple[str, float, float, str]], obstacles: list,
                segments: list = ()) -> list[str]:
    """Draw each (key, x, y, colour) at the nearest place whose text overlaps no other key, no
    marker, no leader line and no drawn line `segments` (display coordinates), and stays inside
    the axes; coincident points share one joined key.
    Returns the keys that found no place (listed under the plot by the caller)."""
    figure = axes.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer).shrunk(0.995, 0.99)
    scale = figure.dpi / 72
    groups: list[tuple[list[str], float, float, str, tuple[float, float]]] = []
    for key, x, y, colour in sorted(labelled, key=lambda item: (item[1], item[2])):
        px, py = axes.transData.transform((x, y))
        near = next((group for group in groups if abs(group[4][0] - px) < 4 * scale and
                     abs(group[4][1] - py) < 4 * scale), None)
        if near:
            near[0].append(key)
        else:
            groups.append(([key], x, y, colour, (px, py)))
    placed, leaders, unplaced = [], list(segments), []
    for keys, x, y, colour, (px, py) in groups:
        text = ",".join(sorted(keys, key=lambda key: (0, int(key), "") if key.isdigit() else (1, 0, key)))
        for ring in _RINGS:
            done = False
            for angle in _ANGLES:
                dx, dy = ring * math.cos(math.radians(angle)), ring * math.sin(math.radians(angle))
                leader = ring >= _RINGS[2]
                annotation = axes.annotate(
                    text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=KEY_SIZE, color=colour,
                    ha="left" if dx > 1 else "right" if dx < -1 else "center",
                    va="bottom" if dy > 1 else "top" if dy < -1 else "center", zorder=6,
                    arrowprops=dict(arrowstyle="-", color=colour, lw=0.5, alpha=0.7, shrinkA=0, shrinkB=3)
                    if leader else None)
                box = annotation.get_window_extent(renderer).padded(1.5 * scale)
                anchor = (px + dx * scale, py + dy * scale)
                clear = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) and \
                    not any(_boxes_overlap(box, other) for other in placed + obstacles) and \
                    not any(_segment_hits(box, start, end) for start, end in leaders) and \
                    not (leader and any(_segment_hits(other, (px, py), anchor) for other in placed))
                if clear:
                    placed.append(box)
                    if leader:
                        leaders.append(((px, py), anchor))
                    done = True
                    break
                annotation.remove()
            if done:
                break
        else:
            unplaced.append(text)
    return unplaced


def _marker_boxes(axes, series_list: list[Series]) -> list:
    from matplotlib.transforms import Bbox

    scale = axes.figure.dpi / 72
    boxes = []
    for series in series_list:
        radius = (math.sqrt(STYLES[series.kind][1]) / 2 + 0.5) * scale
        for mark in series.marks:
            if _finite(mark):
                px, py = axes.transData.transform((mark.cost, mark.score))
                boxes.append(Bbox.from_extents(px - radius, py - radius, px + radius, py + radius))
    return boxes


def _finish(axes, series_list: list[Series], labelled_kinds: tuple[str, ...], bottom: float | None = None,
            lines: list[list[tuple[float, float]]] = ()) -> str:
    """Freeze the limits (from `bottom` up, if given), put the legend beside the axes and place
    every key clear of the `lines` drawn. The cost axis spans the points, not their ranges: one
    round taken while the machine was busy must not squeeze the others into a corner; returns
    what the title should say about ranges cut at the frame ('' for none)."""
    axes.margins(x=0.06, y=0.1)
    axes.autoscale_view()
    marks = [mark for series in series_list for mark in series.marks if _finite(mark)]
    cut = ""
    if any(mark.cost_range for mark in marks):
        low, high = min(mark.cost for mark in marks), max(mark.cost for mark in marks)
        if axes.get_xscale() == "log":
            ratio = (high / low) ** 0.06 if high > low else 1.2
            low, high = low / ratio, high * ratio
        else:
            pad = 0.06 * (high - low) or 0.1 * abs(high) or 1.0
            low, high = low - pad, high + pad
        axes.set_xlim(low, high)
        beyond = [mark.cost_range[1] for mark in marks if mark.cost_range and mark.cost_range[1] > high]
        cut = f"; ranges cut at the frame (the slowest round reaches {max(beyond):.0f})" if beyond else ""
    axes.set_xlim(axes.get_xlim())
    axes.set_ylim(bottom if bottom is not None else axes.get_ylim()[0], axes.get_ylim()[1])
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    labelled = [(mark.key, mark.cost, mark.score, STYLES[series.kind][4]) for series in series_list
                if series.kind in labelled_kinds for mark in series.marks if mark.key and _finite(mark)]
    segments = [(axes.transData.transform(start), axes.transData.transform(end))
                for line in lines for start, end in zip(line, line[1:])]
    unplaced = _place_keys(axes, labelled, _marker_boxes(axes, series_list), segments)
    if unplaced:
        axes.annotate(f"no room to label: {'; '.join(unplaced)} (see the table)", (0, 0), xycoords="axes fraction",
                      xytext=(0, -34), textcoords="offset points", fontsize=7, color="#52606d", va="top")
    return cut


def tradeoff_plot(series_list: list[Series], *, cost_label: str, score_label: str, title: str,
                  higher_is_better: bool = True, budget: float | None = None, log_score: bool = False,
                  log_cost: bool = False) -> bytes:
    """Score against cost of every series, keys beside the points, error bars where known, and
    the Pareto frontier of the configs and the configs a search found, together."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    on_front = [mark for series in series_list if series.kind in FRONTIER_KINDS for mark in series.marks
                if _finite(mark)]
    front = [on_front[i] for i in pareto_front([m.cost for m in on_front], [m.score for m in on_front],
                                               higher_is_better)]
    for series in series_list:
        _draw(axes, series)
    if front:
        axes.plot([m.cost for m in front], [m.score for m in front], "-", color=FRONTIER_COLOR, lw=1.2, zorder=3,
                  label="Pareto frontier")
    doubtful = [mark for series in series_list for mark in series.marks if mark.doubtful and _finite(mark)]
    if doubtful:
        axes.scatter([m.cost for m in doubtful], [m.score for m in doubtful], s=170, facecolors="none",
                     edgecolors=FRONTIER_COLOR, linewidths=1.0, linestyle=":", zorder=5,
                     label="latency order in doubt (note)")
    if budget is not None:
        axes.axvline(budget, color="#d98b06", linestyle="--", linewidth=1, label="search budget")
    if log_score:
        axes.set_yscale("log")
        _log_axis(axes.yaxis)
    if log_cost:
        axes.set_xscale("log")
        _log_axis(axes.xaxis)
    axes.set_xlabel(cost_label)
    axes.set_ylabel(score_label)
    cut = _finish(axes, series_list, ("configs", "found", "compare", "published"),
                  lines=[[(m.cost, m.score) for m in front]])
    axes.set_title(title + cut, fontsize=8, loc="left", color="#3e4c59")
    return _svg(figure)


def search_plot(candidates: Series, found: Series, *, cost_label: str, objective_label: str, budget: float,
                log_objective: bool) -> bytes:
    """Every candidate a search evaluated (objective against cost; lower is better), its found
    frontier keyed like the tables, and the budget. On a log axis, candidates at or below zero
    (the full model itself) sit on the axis' floor, said in the legend."""
    figure, axes = plt.subplots(figsize=FIGURE_SIZE)
    positive = [m.score for m in candidates.marks + found.marks if _finite(m) and m.score > 0]
    floor = min(positive) / 2 if log_objective and positive else None

    def floored(series: Series, keep_floor: bool) -> Series:
        if floor is None:
            return series
        return Series(series.label, series.kind, [Mark(m.key, m.cost, max(m.score, floor)) for m in series.marks
                                                  if keep_floor or m.score > floor])

    at_floor = [m for m in candidates.marks if floor is not None and _finite(m) and m.score <= floor]
    shown = [floored(candidates, False), floored(found, True)]
    for series in shown:
        _draw(axes, series)
    front = sorted((m for m in shown[1].marks if _finite(m)), key=lambda m: m.cost)
    axes.plot([m.cost for m in front], [m.score for m in front], "-", color="#d98b06", lw=1.0, zorder=3)
    if at_floor:
        axes.scatter([m.cost for m in at_floor], [floor] * len(at_floor), marker="v", s=22, color="#52606d", zorder=4,
                     label=f"{objective_label.split(' ')[0]} \u2264 0 (the full model; drawn at the floor)")
    axes.axvline(budget, color="#d98b06", linestyle="--", linewidth=1, label="budget")
    if floor is not None:
        axes.set_yscale("log")
    axes.set_xlabel(cost_label)
    axes.set_ylabel(objective_label)
    _finish(axes, shown, ("found",), bottom=floor / 1.6 if floor is not None else None,
            lines=[[(m.cost, m.score) for m in front]])
    return _svg(figure)


# Colours of the discrete widths, narrowest first (enough for any MatFormer's few widths).
_WIDTH_COLORS = ("#c6dbef", "#6baed6", "#2171b5", "#08306b", "#fdae6b", "#e6550d", "#a63603", "#54278f")


def width_heatmap(names: list[str], num_layers: int, layers_skipped: list[list[int]],
                  ffn_widths: list[list[int]], base_width: int) -> bytes:
    """Per-layer FFN width of every config, one colour per distinct width; skipped layers hatched."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    widths = sorted({width for row in ffn_widths for width in row})
    colors = [_WIDTH_COLORS[i % len(_WIDTH_COLORS)] for i in range(len(widths))]
    grid = np.full((len(names), num_layers), math.nan)
    for row, (skipped, row_widths) in enumerate(zip(layers_skipped, ffn_widths)):
        kept = [layer for layer in range(num_layers) if layer not in set(skipped)]
        for layer, width in zip(kept, row_widths):
            grid[row, layer] = widths.index(width)
    figure, axes = plt.subplots(figsize=(max(6.0, num_layers * 0.24), 0.24 * len(names) + 1.1))
    axes.set_facecolor("#ffffff")
    axes.imshow(grid, aspect="auto", cmap=ListedColormap(colors),
                norm=BoundaryNorm(np.arange(len(widths) + 1) - 0.5, len(widths)), interpolation="nearest")
    for row, skipped in enumerate(layers_skipped):
        for layer in skipped:
            axes.add_patch(plt.Rectangle((layer - 0.5, row - 0.5), 1, 1, facecolor="#f5f7fa", hatch="xxx",
                                         edgecolor="#9aa5b1", linewidth=0))
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=6)
    axes.set_xlabel("layer of the base model")
    handles = [Patch(facecolor=color, label=f"{width} (the widest)" if width == base_width else
                     f"{width} ({width / base_width:.2g} of the widest)") for width, color in zip(widths, colors)]
    handles.append(Patch(facecolor="#f5f7fa", edgecolor="#9aa5b1", hatch="xxx", label="skipped"))
    axes.legend(handles=handles, title="FFN width", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                title_fontsize=7, frameon=False)
    return _svg(figure)
