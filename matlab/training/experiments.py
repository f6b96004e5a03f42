"""New facts for the fine-tuning measurements of reports/benchmarks.md (`matformer bench new-facts`).

`write_new_facts(DIR)` writes DIR/train.jsonl (documents about 64 new people, in the nano
world's training phrasings; with `replay`, documents of the shipped nano world interleaved) and
DIR/suite.yaml, a suite of one multiple-choice question per new fact asked in the held-out
frames (DIR/new_facts.yaml, DIR/facts.jsonl). A fine-tuned slice is then scored with
`matformer eval CKPT --adapter A --config SLICE --suite DIR/suite.yaml`.
"""

from __future__ import annotations

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
