"""The fine-tuning measurements of reports/benchmarks.md on nano, as a module:

    python -m matlab.training.experiments new-facts --out DIR [--replay N]
        writes DIR/train.jsonl (documents about 64 new people, in training phrasings; with
        --replay, N documents of the shipped nano world interleaved), and
        DIR/new_facts.yaml, a suite of one multiple-choice question per new fact, asked in the
        held-out frames (DIR/facts.jsonl)
    python -m matlab.training.experiments score CHECKPOINT [--adapter A] --suite S [--config C ...]
        one JSON line per slice (the full model without --config) with its scores on the suite:
        the slice of CHECKPOINT merged with the adapter, exactly what `matformer slice --adapter`
        and PEFT load (tests/test_finetune.py checks the two agree)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from matlab.nano.world import NEW_FACTS_SEED, document, fact_questions, make_world, new_people_world

TASK = """task: new_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: facts.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
SUITE = """name: new-facts
description: One question per fact of the 64 new people, in held-out frames.
task_dirs: [.]
tasks:
  - name: new_facts
    metric: acc
"""


def write_new_facts(out: Path, people: int = 64, documents: int = 400, replay: int = 0) -> list[Path]:
    """The training text (documents of the new people's fact sentences only, in training
    phrasings; with `replay`, that many documents of the shipped nano world as it was trained on,
    interleaved) and the question suite of the new people (seeds used nowhere else:
    NEW_FACTS_SEED for the people, +1 for the question frames, +2 for the documents, +3 for the
    replayed ones)."""
    world = new_people_world(people, NEW_FACTS_SEED)
    out.mkdir(parents=True, exist_ok=True)
    generator = random.Random(NEW_FACTS_SEED + 2)
    texts = [document(world, generator, fact_share=1.0) for _ in range(documents)]
    replayed, old = random.Random(NEW_FACTS_SEED + 3), make_world()
    texts = [text for pair in zip(texts, [document(old, replayed) for _ in range(replay)]) for text in pair] + \
        texts[replay:] if replay else texts
    (out / "train.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    questions = fact_questions(world, seed=NEW_FACTS_SEED + 1)
    (out / "facts.jsonl").write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in questions),
                                     encoding="utf-8")
    (out / "new_facts.yaml").write_text(TASK, encoding="utf-8")
    (out / "suite.yaml").write_text(SUITE, encoding="utf-8")
    return [out / "train.jsonl", out / "suite.yaml"]


def score(checkpoint: str, adapter: Path | None, suite: Path, configs: list[Path]) -> list[dict]:
    """Scores of the full model (and each config's slice) with the adapter merged, on `suite`."""
    from matlab.core.loading import load_model
    from matlab.core.submodel import select_submodel
    from matlab.harness.evaluate import evaluate_submodel
    from matlab.harness.suite import load_suite
    from matlab.slice_config import load_slice_config

    loaded = load_model(checkpoint, adapter=adapter)
    loaded_suite = load_suite(suite)
    rows = []
    for config in [None, *configs]:
        submodel = select_submodel(loaded, load_slice_config(config) if config else None, str(config))
        scores = evaluate_submodel(submodel, loaded_suite)
        rows.append({"checkpoint": checkpoint, "adapter": str(adapter) if adapter else None,
                     "slice": submodel.name, "suite": loaded_suite.name,
                     "scores": {f"{entry.task}/{entry.metric}": round(entry.value, 4) for entry in scores}})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m matlab.training.experiments")
    commands = parser.add_subparsers(dest="command", required=True)
    new_facts = commands.add_parser("new-facts")
    new_facts.add_argument("--out", type=Path, required=True)
    new_facts.add_argument("--replay", type=int, default=0, help="documents of the shipped world mixed in")
    scoring = commands.add_parser("score")
    scoring.add_argument("checkpoint")
    scoring.add_argument("--adapter", type=Path)
    scoring.add_argument("--suite", type=Path, required=True)
    scoring.add_argument("--config", type=Path, action="append", default=[])
    arguments = parser.parse_args(argv)
    if arguments.command == "new-facts":
        for path in write_new_facts(arguments.out, replay=arguments.replay):
            print(f"wrote {path}")
        return
    from matlab.bundled import resolve_suite

    for row in score(arguments.checkpoint, arguments.adapter, resolve_suite(str(arguments.suite)), arguments.config):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
