"""A deterministic synthetic world: people with attributes, facts in several phrasings,
small arithmetic and short narratives, over a closed vocabulary.

Training text states every fact in the training phrasings. Held-out evaluation asks about
the same facts inside sentence frames that never occur in training (so no evaluation text
was trained on as phrased), and held-out narratives are drawn with a different seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SYLLABLES = ("ba", "ko", "mi", "ru", "te", "vo", "sa", "ni", "de", "fu", "gi", "pa", "lo", "ze", "ha", "ju")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "city": ("velmar", "osk", "trana", "bellin", "quarro", "dunmere", "ashfal", "corvel", "imbra", "kelto",
             "morrow", "peldor", "sarn", "tiber", "uxley", "wendo"),
    "job": ("baker", "smith", "farmer", "sailor", "healer", "miner", "weaver", "potter", "hunter", "scribe",
            "guard", "cook", "tailor", "mason", "painter", "singer"),
    "pet": ("cat", "dog", "owl", "fox", "goat", "horse", "crow", "frog", "hare", "toad", "lynx", "mole"),
    "color": ("red", "blue", "green", "white", "black", "gold", "grey", "pink", "brown", "teal", "amber", "violet"),
}
# Training phrasings: {p} is the person, {v} the value.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city": ("{p} lives in {v} .", "the home of {p} is {v} .", "{v} is where {p} lives ."),
    "job": ("{p} works as a {v} .", "the job of {p} is {v} .", "{p} is a {v} by trade ."),
    "pet": ("{p} has a pet {v} .", "the pet of {p} is a {v} .", "a {v} lives with {p} ."),
    "color": ("{p} likes the color {v} .", "the favorite color of {p} is {v} .", "{v} is the color {p} likes ."),
}
# The cue an evaluation question ends with; the answer follows it.
EVAL_CUES = {"city": "{p} lives in", "job": "{p} works as a", "pet": "{p} has a pet", "color": "{p} likes the color"}
TRAIN_FRAMES = ("", "we know that", "it is true that", "note that", "people say that")
EVAL_FRAMES = ("as everyone knows ,", "it is well known that", "the records show that")
NARRATIVES = ("one day {p} and {q} met in {c} .", "{p} visited {q} , who is a {j} .",
              "{p} gave {q} a {col} gift .", "{p} walked with a {pet} to {c} .")
NUMBER_WORDS = tuple(str(n) for n in range(0, 41))


@dataclass(frozen=True)
class World:
    people: tuple[str, ...]
    facts: dict[str, dict[str, str]] = field(repr=False)  # person -> attribute -> value

    def vocabulary(self) -> list[str]:
        words: set[str] = set(self.people) | set(NUMBER_WORDS) | {"plus", "is", "so", ",", ".", "?"}
        for values in ATTRIBUTES.values():
            words |= set(values)
        for texts in (*TRAIN_TEMPLATES.values(), TRAIN_FRAMES, EVAL_FRAMES, NARRATIVES, tuple(EVAL_CUES.values())):
            for text in texts:
                words |= {word for word in text.split() if not word.startswith("{")}
        return sorted(words)


def make_world(people: int = 256, seed: int = 0) -> World:
    """`people` distinct people, each with one value per attribute."""
    generator = random.Random(seed)
    names: set[str] = set()
    while len(names) < people:
        names.add("".join(generator.choice(SYLLABLES) for _ in range(generator.choice((2, 3)))))
    ordered = tuple(sorted(names))
    facts = {person: {attribute: generator.choice(values) for attribute, values in ATTRIBUTES.items()}
             for person in ordered}
    return World(ordered, facts)


def fact_sentence(world: World, person: str, attribute: str, generator: random.Random) -> str:
    frame = generator.choice(TRAIN_FRAMES)
    sentence = generator.choice(TRAIN_TEMPLATES[attribute]).format(p=person, v=world.facts[person][attribute])
    return f"{frame} {sentence}".strip()


def arithmetic_sentence(generator: random.Random) -> str:
    a, b = generator.randrange(0, 21), generator.randrange(0, 21)
    return f"{generator.choice(TRAIN_FRAMES)} {a} plus {b} is {a + b} .".strip()


def narrative_sentence(world: World, generator: random.Random) -> str:
    p, q = generator.sample(world.people, 2)
    template = generator.choice(NARRATIVES)
    return template.format(p=p, q=q, c=world.facts[p]["city"], j=world.facts[q]["job"],
                           col=world.facts[q]["color"], pet=world.facts[p]["pet"])


def document(world: World, generator: random.Random, sentences: int = 12, fact_share: float = 0.7) -> str:
    """A training document: mostly facts (`fact_share` of the sentences), the rest arithmetic
    and narrative in equal parts."""
    parts = []
    for _ in range(sentences):
        roll = generator.random()
        if roll < fact_share:
            parts.append(fact_sentence(world, generator.choice(world.people), generator.choice(tuple(ATTRIBUTES)),
                                       generator))
        elif roll < fact_share + (1 - fact_share) / 2:
            parts.append(arithmetic_sentence(generator))
        else:
            parts.append(narrative_sentence(world, generator))
    return " ".join(parts)


def fact_questions(world: World, seed: int = 1) -> list[dict]:
    """One multiple-choice question per (person, attribute), in held-out frames."""
    generator = random.Random(seed)
    questions = []
    for person in world.people:
        for attribute, values in ATTRIBUTES.items():
            frame = generator.choice(EVAL_FRAMES)
            questions.append({"question": f"{frame} {EVAL_CUES[attribute].format(p=person)}",
                              "choices": list(values), "answer": values.index(world.facts[person][attribute]),
                              "attribute": attribute, "person": person})
    return questions


def arithmetic_questions(count: int = 200, seed: int = 2) -> list[dict]:
    """`a plus b is` in held-out frames; five candidate sums, one right."""
    generator = random.Random(seed)
    questions = []
    for _ in range(count):
        a, b = generator.randrange(0, 21), generator.randrange(0, 21)
        wrong = generator.sample([n for n in range(max(0, a + b - 6), min(40, a + b + 6) + 1) if n != a + b], 4)
        choices = sorted([a + b, *wrong])
        questions.append({"question": f"{generator.choice(EVAL_FRAMES)} {a} plus {b} is",
                          "choices": [str(n) for n in choices], "answer": choices.index(a + b)})
    return questions


def heldout_text(world: World, documents: int = 60, seed: int = 3) -> list[dict]:
    generator = random.Random(10_000 + seed)
    return [{"text": document(world, generator)} for _ in range(documents)]


# The search's default calibration text for nano: documents drawn like the held-out ones but
# from a generator neither training (seeds 0..), the evaluation sets (1, 2) nor the held-out
# text (3) uses.
CALIBRATION_SEED = 4


def calibration_text(world: World, documents: int = 40) -> list[str]:
    return [row["text"] for row in heldout_text(world, documents, seed=CALIBRATION_SEED)]


# New facts for fine-tuning experiments: people the shipped nano model never saw. Its tokenizer
# is a closed word list, so a new person is named by two of its words that name nobody: a
# color and a pet ("amber fox"). Their facts come from a seed that neither training, the
# evaluation sets nor the calibration text uses.
NEW_FACTS_SEED = 5


def new_people_world(people: int = 64, seed: int = NEW_FACTS_SEED) -> World:
    """`people` new people with two-word names (color, pet), each with one value per attribute."""
    generator = random.Random(seed)
    pairs = [f"{color} {pet}" for color in ATTRIBUTES["color"] for pet in ATTRIBUTES["pet"]]
    if people > len(pairs):
        raise ValueError(f"at most {len(pairs)} new people can be named")
    names = tuple(sorted(generator.sample(pairs, people)))
    facts = {person: {attribute: generator.choice(values) for attribute, values in ATTRIBUTES.items()}
             for person in names}
    return World(names, facts)
