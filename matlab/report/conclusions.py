"""The report's "What the data says": sentences computed from the measured rows (cliffs along
each frontier, configs within noise of costlier ones, frontier steps that are chance, the
compared run against this one, and latencies whose order is in doubt)."""

from __future__ import annotations

import math

from matlab.report import analysis as pareto
from matlab.report.context import ReportContext, measured_points, rows_of
from matlab.report.scores import Score, document_counts, format_score, log_scale, score_of


def _said(point: pareto.Measured) -> str:
    return format_score(Score(point.score, point.stderr, None, False))


def computed_conclusions(context: ReportContext) -> list[str]:
    """What the data says, computed from it: cliffs along each frontier, the cheapest config
    within noise of the costliest, frontier steps that are noise, the compared run's configs
    against this run's, and latencies whose order is in doubt."""
    lines = []
    limit = context.run.get("identity", {}).get("limit")
    for task, metric, higher in context.tasks:
        rows = rows_of(context.own, task, metric)
        points, label = measured_points(context, rows), f"{task} {metric}"
        step = pareto.cliff(points, higher, log_scale([point.score for point in points]))
        if step:
            low, high = step
            budget = context.budget("effective_params") if context.found_ids else None
            on_cliff = budget is not None and low.cost <= budget < high.cost
            lines.append(f"{label}: {low.name} ({low.cost:.2f}M parameters) keeps {_said(low)} where {high.name} "
                         f"({high.cost:.2f}M) keeps {_said(high)}, the frontier's largest step, for "
                         f"{100 * (high.cost / low.cost - 1):.0f}% more parameters"
                         + (f"; the search's budget ({budget:.2f}M) sits on this cliff." if on_cliff else "."))
        pair = pareto.cheapest_equivalent(points, higher)
        if pair:
            costly, cheap = pair
            if pareto.within_noise(cheap, costly):
                difference = abs(cheap.score - costly.score)
                said = f"both {_said(cheap)}" if difference == 0 else (
                    f"{_said(cheap)} against {_said(costly)}; the difference, {difference:.2g}, is within their "
                    f"combined stderr, {pareto.combined_stderr(cheap, costly):.2g}")
                lines.append(f"{label}: {cheap.name} ({cheap.cost:.2f}M) and {costly.name} ({costly.cost:.2f}M) are "
                             f"within noise ({said}): {costly.cost / cheap.cost:.1f} times the parameters buy "
                             "nothing measurable.")
            else:
                lines.append(f"{label}: {cheap.name} ({cheap.cost:.2f}M) scores better than {costly.name} "
                             f"({costly.cost:.2f}M): {_said(cheap)} against {_said(costly)}.")
        steps, known = pareto.noisy_steps(points, higher)
        if steps:
            documents = document_counts([score_of(row) for _, row in rows.iterrows()])
            lines.append(f"{label}: {steps} of the {known} steps along the frontier are within their combined stderr, "
                         "so the frontier's order there is chance"
                         + (f" (each score rests on {documents} documents under --limit {limit}; more documents "
                            "would resolve it)." if limit else "."))
    lines += _compare_conclusions(context)
    latency = latency_sentences(context)
    if latency:
        lines.append("Latency: " + " ".join(latency))
    return lines


def _compare_conclusions(context: ReportContext) -> list[str]:
    """Each config of the compared run against the run's config of the same name, on the primary task."""
    if context.compare is None:
        return []
    task, metric, _ = context.primary
    own = rows_of(context.frame, task, metric)
    lines = []
    for _, row in rows_of(context.compare, task, metric).iterrows():
        ours = measured_points(context, own[own["config"] == row["config"]])
        if not ours or not math.isfinite(row["value"]):
            continue
        ours, score = ours[0], score_of(row)
        theirs = pareto.Measured(row["config"], row["effective_params"] / 1e6, score.value, score.stderr)
        if pareto.significant(ours, theirs) is None:
            verdict = " (no stderr to judge the difference)."
        elif pareto.significant(ours, theirs):
            verdict = ": a significant difference."
        elif pareto.within_noise(ours, theirs):
            verdict = ": within noise."
        else:
            verdict = ": a difference within twice their combined stderr (not significant)."
        lines.append(f"{task} {metric}: {row['config']} keeps {_said(ours)} sliced from this run's model and "
                     f"{_said(theirs)} from {context.compare_label}{verdict}")
    return lines


def latency_sentences(context: ReportContext) -> list[str]:
    """What the rounds say about the latencies: configs whose own rounds disagree, and larger
    configs timed faster than smaller ones (beyond the rounds' spread, or within it)."""
    sentences = []
    if context.unsteady:
        worst, count = context.unsteady[0], len(context.unsteady)
        whose = "configs'" if count > 1 else "config's"
        sentences.append(
            f"{count} {whose} rounds disagree by more than "
            f"{pareto.UNSTEADY_RATIO:g} times (the worst, {worst.name}: {worst.fastest:.1f} to {worst.slowest:.1f} ms "
            "per token): the machine was busy during some rounds, so those medians are not the configs' latency; "
            "ringed on the latency plot.")
    if context.doubts:
        larger, smaller, overlap = context.doubts[0]
        sentence = (f"{larger.name} ({larger.layers} layers, {larger.weight_bytes / 1e6:.1f} MB) measured faster "
                    f"than {smaller.name} ({smaller.layers} layers, {smaller.weight_bytes / 1e6:.1f} MB), "
                    f"{larger.median:.1f} against {smaller.median:.1f} ms per token, though it does more work: ")
        sentence += "their rounds overlap, so the order is noise" if overlap else (
            "their rounds disagree by more than their own spread (a busy machine); both ringed")
        beyond = sum(not overlap for *_, overlap in context.doubts[1:])
        within = len(context.doubts) - 1 - beyond
        more = [f"{beyond} beyond the rounds' spread" if beyond else "", f"{within} within it" if within else ""]
        said = " and ".join(part for part in more if part)
        sentences.append(sentence + (f" ({len(context.doubts) - 1} more such pairs: {said})." if said else "."))
    if sentences:
        sentences.append("Measure latency again on an idle machine, with more --latency-rounds.")
    return sentences
