"""Does capacity separate nano-E4B from nano-E2B? Train the nano model as a MatFormer on a
world of a given size and measure both on the held-out fact questions every few steps.

Fact accuracy is scored directly: every answer is one token, so lm-evaluation-harness's `acc`
(the choice with the highest log-likelihood after the question) is the argmax of the
question's last-position logits over the choice tokens. Scoring in-process lets the
benchmark measure the same model at many steps of one training run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import Gemma3nForCausalLM

from matlab.core.elastic import build_submodel
from matlab.nano.configs import nano_configs
from matlab.nano.model import nano_facts
from matlab.nano.train import TrainResult, TrainSettings, train_nano
from matlab.nano.world import ATTRIBUTES, fact_questions
from matlab.plan import SlicePlan

MEASURED = ("nano-e4b", "nano-e2b", "nano-l4")


def fact_accuracy(model: Gemma3nForCausalLM, tokenizer, questions: list[dict]) -> float:
    """Share of questions whose answer token has the highest next-token logit among the choices."""
    by_length: dict[int, list[tuple[list[int], dict]]] = {}
    for question in questions:
        ids = [tokenizer.bos_token_id, *tokenizer(question["question"], add_special_tokens=False).input_ids]
        by_length.setdefault(len(ids), []).append((ids, question))
    right = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for items in by_length.values():
            logits = model(input_ids=torch.tensor([ids for ids, _ in items], device=device)).logits[:, -1]
            for row, (_, question) in zip(logits, items):
                choices = torch.tensor(tokenizer.convert_tokens_to_ids(question["choices"]), device=row.device)
                right += int(int(row[choices].argmax()) == question["answer"])
    return right / len(questions)


def bench_capacity(settings: TrainSettings, every: int,
                   on_point: Callable[[dict], None] | None = None) -> dict:
    """Train with `settings`; every `every` steps score nano-E4B, nano-E2B and nano-L4 on the
    world's fact questions (held-out frames). Returns the settings, the points and the chance level."""
    points: list[dict] = []
    built: dict = {}  # questions and plans, built at the first measurement from the run's own world and config

    def measure(step: int, run: TrainResult) -> None:
        if not built:
            facts = nano_facts(run.model.config)
            built["questions"] = fact_questions(run.world)
            built["plans"] = {stem: SlicePlan.build(nano_configs(settings.ffn)[stem], facts) for stem in MEASURED}
        point = {"step": step}
        for stem, plan in built["plans"].items():
            submodel = run.model if stem == "nano-e4b" else build_submodel(run.model, plan).eval()
            point[stem] = round(fact_accuracy(submodel, run.tokenizer, built["questions"]), 4)
        points.append(point)
        if on_point:
            on_point(point)

    result = train_nano(settings, every=every, on_every=measure)
    # One question per (person, attribute), its choices all of the attribute's values.
    chance = sum(1 / len(values) for values in ATTRIBUTES.values()) / len(ATTRIBUTES)
    return {"settings": vars(settings), "points": points, "chance": round(chance, 4),
            "seconds": round(result.seconds, 1)}
