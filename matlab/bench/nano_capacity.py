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

from matlab.architecture import facts_from_config
from matlab.core.elastic import build_submodel
from matlab.core.loading import text_facts
from matlab.nano.configs import nano_configs
from matlab.nano.tokenizer import build_tokenizer
from matlab.nano.train import TrainSettings, train_nano
from matlab.nano.world import fact_questions, make_world
from matlab.plan import SlicePlan

MEASURED = ("nano-e4b", "nano-e2b", "nano-l4")


def fact_accuracy(model: Gemma3nForCausalLM, tokenizer, questions: list[dict]) -> float:
    """Share of questions whose answer token has the highest next-token logit among the choices."""
    by_length: dict[int, list[tuple[list[int], dict]]] = {}
    for question in questions:
        ids = [tokenizer.bos_token_id, *tokenizer(question["question"], add_special_tokens=False).input_ids]
        by_length.setdefault(len(ids), []).append((ids, question))
    right = 0
    with torch.no_grad():
        for items in by_length.values():
            device = next(model.parameters()).device
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
    state: dict = {}

    def measure(step: int, model: Gemma3nForCausalLM) -> None:
        if "plans" not in state:
            facts = text_facts(facts_from_config({**model.config.to_dict(), "model_type": "gemma3n_text"}, "nano"))
            state["plans"] = {stem: SlicePlan.build(nano_configs(settings.ffn)[stem], facts) for stem in MEASURED}
        point = {"step": step}
        for stem, plan in state["plans"].items():
            submodel = model if stem == "nano-e4b" else build_submodel(model, plan).eval()
            point[stem] = round(fact_accuracy(submodel, state["tokenizer"], state["questions"]), 4)
        points.append(point)
        if on_point:
            on_point(point)

    world = make_world(settings.people, seed=0)  # as train_nano builds it (seeded)
    state["tokenizer"] = build_tokenizer(world.vocabulary())
    state["questions"] = fact_questions(world)
    result = train_nano(settings, every=every, on_every=measure)
    chance = sum(1 / len(question["choices"]) for question in state["questions"]) / len(state["questions"])
    return {"settings": vars(settings), "points": points, "chance": round(chance, 4),
            "seconds": round(result.seconds, 1)}
