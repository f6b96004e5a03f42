"""Scores and latencies as a report shows them: a score with its standard error (lm-eval's, or
the binomial estimate under --limit) and document count, milliseconds per token from a row's
tokens/s, and whether values span enough to need a log axis."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Metrics that are a mean of 0/1 outcomes: where lm-eval gives no stderr (it computes none
# under --limit), the binomial one is estimated from the score and the documents.
BINARY_METRICS = ("acc", "acc_norm", "exact_match")


def stated_or_none(value: object) -> object:
    """A stated figure, or None where the config states none (pandas reads those as NaN)."""
    return None if value is None or value != value else value  # NaN is the one value unequal to itself


@dataclass(frozen=True)
class Score:
    """A measured score as the report shows it."""

    value: float
    stderr: float | None
    samples: int | None
    estimated: bool  # the stderr is the binomial estimate, not lm-eval's


def score_of(row) -> Score:
    """The score of a result row, with its stderr (lm-eval's, or the binomial estimate)."""
    value = float(row["value"])
    stderr, samples = stated_or_none(row.get("stderr")), stated_or_none(row.get("samples"))
    samples = int(samples) if samples is not None else None
    if isinstance(stderr, (int, float)) and math.isfinite(stderr):
        return Score(value, float(stderr), samples, False)
    if stated_or_none(row.get("limit")) is not None and row["metric"] in BINARY_METRICS and samples and samples > 1 \
            and 0 <= value <= 1:
        return Score(value, math.sqrt(value * (1 - value) / (samples - 1)), samples, True)
    return Score(value, None, samples, False)


def _decimals(stderr: float) -> int:
    """Decimals that show a standard error to two significant digits where its first is 1 or 2,
    to one otherwise (0.015, 0.009: the usual rounding of uncertainties)."""
    exponent = math.floor(math.log10(stderr))
    return max(0, (1 if stderr / 10 ** exponent < 3 else 0) - exponent)


def format_score(score: Score) -> str:
    """'0.683 ± 0.015' (the value to its stderr's precision), or four digits without one."""
    if math.isnan(score.value):
        return "nan"
    if score.stderr is None:
        return f"{score.value:.4g}"
    if score.stderr == 0:  # every document scored alike
        return f"{score.value:.4g} \u00b1 0"
    places = _decimals(score.stderr)
    return f"{score.value:.{places}f} \u00b1 {score.stderr:.{places}f}"


def latency_ms(row, column: str) -> tuple[float, float, float] | None:
    """(median, fastest, slowest) ms per token over the rounds, from the rows' tokens/s (a round's
    slowest throughput is its longest latency); None where not measured."""
    median, fastest, slowest = (stated_or_none(row.get(name)) for name in (column, f"{column}_max", f"{column}_min"))
    if median is None or median <= 0:
        return None
    fastest, slowest = (median if value is None or value <= 0 else value for value in (fastest, slowest))
    return 1000.0 / median, 1000.0 / fastest, 1000.0 / slowest


def document_counts(scores: list[Score]) -> str:
    """How many documents the scores rest on: '1,024', or the range '60-1,024'; '' if unknown."""
    counts = sorted({score.samples for score in scores if score.samples})
    if not counts:
        return ""
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}"


def log_scale(values: list[float]) -> bool:
    """Whether scores span enough to need a log axis: positive, not fractions, and a factor of 5
    or more apart (one perplexity of 200 would flatten the others' 4 to 13 on a linear one)."""
    finite = [value for value in values if math.isfinite(value)]
    return bool(finite) and min(finite) > 0 and max(finite) > 1 and max(finite) / min(finite) >= 5
