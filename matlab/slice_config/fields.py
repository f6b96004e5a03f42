"""Fields and messages shared by the YAML config models: whole numbers, bounded layer counts,
and many problems of one kind reported once, with a count."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ValidationError

from matlab.errors import shown_value

# More layers than any model has; lists and `{width, count}` runs are refused past this before
# they are expanded (the exact count is checked against the architecture in validation).
MAX_LAYERS = 100_000
SHOWN_ITEMS = 5     # of many bad items of one kind, the first few are named
SHOWN_PROBLEMS = 5  # distinct problems in one message, before "and N more"


def first_few(items: Sequence[Any], limit: int = SHOWN_ITEMS, separator: str = ", ") -> str:
    """'35, 36, 37, 38, 39 and 9,995 more' for a long sequence; all items for a short one."""
    listed = separator.join(str(item) for item in items[:limit])
    return listed if len(items) <= limit else f"{listed} and {len(items) - limit:,} more"


def collapse(problems: Sequence[tuple[str, str]], separator: str = ": ") -> list[str]:
    """`where: what` lines from (where, what) pairs: one line per distinct `what`, naming the
    first few places it occurs, and past SHOWN_PROBLEMS lines a count of the rest, so ten
    thousand bad entries make a short message."""
    places: dict[str, list[str]] = {}
    for where, what in problems:
        places.setdefault(what, []).append(where)
    lines = [f"{first_few(wheres)}{separator}{what}" for what, wheres in places.items()]
    if len(lines) > SHOWN_PROBLEMS:
        rest = sum(len(wheres) for wheres in list(places.values())[SHOWN_PROBLEMS:])
        lines = [*lines[:SHOWN_PROBLEMS], f"and {rest:,} more problem(s)"]
    return lines


def whole_number(value: Any) -> int:
    """An integer field's value: ints, and floats without a fraction (256.0); not booleans,
    text or fractions, which pydantic's lax mode would coerce or report by type name only."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{shown_value(value)} is not a whole number")


WholeNumber = Annotated[int, BeforeValidator(whole_number)]
Item = TypeVar("Item")


def expand_runs(value: Sequence[Any], run: Callable[[Any], tuple[Item, int]], noun: str) -> list[Item]:
    """A per-layer list whose entries may be runs: `run(entry)` gives (item, count), or raises
    ValueError naming what is wrong. The running total is bounded before anything is expanded (a
    count of 10**8 would otherwise build that list); every bad entry is reported, collapsed."""
    if len(value) > MAX_LAYERS:
        raise ValueError(f"lists {len(value):,} {noun}; no model has more than {MAX_LAYERS:,} layers")
    runs: list[tuple[Item, int]] = []
    problems: list[tuple[str, str]] = []
    total = 0
    for position, entry in enumerate(value):
        try:
            item, count = run(entry)
        except ValueError as error:
            problems.append((f"entry {position}", str(error)))
            continue
        total += count
        if total > MAX_LAYERS:
            asked = f"{total:,}" if total < 10**15 else "over 10**15"
            raise ValueError(f"entry {position} (a run of {shown_value(count)}) brings the {noun} to {asked} kept "
                             f"layers; no model has more than {MAX_LAYERS:,}")
        runs.append((item, count))
    if problems:
        raise ValueError("; ".join(collapse(problems, separator=" ")))
    return [item for item, count in runs for _ in range(count)]


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per distinct pydantic problem, `field[.index]: message`, as `collapse` groups them."""
    problems = []
    for problem in error.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        problems.append((location, problem["msg"].removeprefix("Value error, ")))
    return collapse(problems)
