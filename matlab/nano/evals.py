"""Held-out evaluation data for the nano model, as JSONL for lm-evaluation-harness tasks."""

from __future__ import annotations

import json
from pathlib import Path

from matlab.nano.world import World, arithmetic_questions, fact_questions, heldout_text


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")


def write_eval_data(world: World, directory: Path) -> list[Path]:
    """Write the three evaluation sets (fact questions, arithmetic, held-out text)."""
    directory.mkdir(parents=True, exist_ok=True)
    sets = {"facts.jsonl": fact_questions(world), "arithmetic.jsonl": arithmetic_questions(),
            "heldout.jsonl": heldout_text(world)}
    for name, rows in sets.items():
        _write_jsonl(directory / name, rows)
    return [directory / name for name in sets]
