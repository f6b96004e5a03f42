"""The slices a nested fine-tune trains: the full model, the family's trained granularity and the
user's own configs, each a validated plan, and which of them a step trains.

Every plan is built by `SlicePlan.build`, which runs the validation `matformer validate` runs
(`require_valid`): a slice that is not valid for the checkpoint is never trained.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from matlab.arch.facts import ArchFacts
from matlab.errors import SliceConfigError
from matlab.plan import SlicePlan
from matlab.slice_config import SliceConfig, load_slice_config

FULL = "full"


@dataclass(frozen=True)
class TrainedSlice:
    name: str
    plan: SlicePlan
    source: str  # the config file, or how the slice was derived

    def record(self) -> dict:
        return {"name": self.name, "source": self.source, "submodel_id": self.plan.submodel_id,
                "layers_skipped": list(self.plan.config.layers_skipped), "ffn_widths": list(self.plan.ffn_widths)}


def trained_granularity(facts: ArchFacts) -> SliceConfig | None:
    """The smaller nested model the family's MatFormer was trained as (Gemma 3n's E2B; nano-E2B on
    nano): every layer at its narrowest trained width, the first attention period of the
    KV-shared region skipped. None for a model without a smaller trained width."""
    widths = [min(facts.trained_widths(layer)) for layer in range(facts.num_layers)]
    if widths == facts.ffn_widths:
        return None
    skipped = tuple(facts.kv_consumers[:facts.attention_period])
    kept = [width for layer, width in enumerate(widths) if layer not in skipped]
    return SliceConfig(name="trained-granularity", description="The family's smaller trained granularity "
                       "(Gemma 3n: E2B).", layers_skipped=skipped, ffn_widths=tuple(kept))


def trained_slices(facts: ArchFacts, configs: list[Path], nested: bool) -> list[TrainedSlice]:
    """The full model, and with `nested` the trained granularity (when it is valid for this
    checkpoint) and every config in `configs` (a SliceConfigError naming the file if one does not
    load or is not valid for this checkpoint); a slice given twice is trained once."""
    slices = [TrainedSlice(FULL, SlicePlan.identity(facts), "the checkpoint")]
    if not nested:
        return slices
    granularity = trained_granularity(facts)
    if granularity is not None:
        try:
            plan = SlicePlan.build(granularity, facts, "trained granularity")
            slices.append(TrainedSlice(granularity.name, plan, "derived from config.json"))
        except SliceConfigError:  # a small test model whose layout has no valid E2B: trained without it
            pass
    for path in configs:
        plan = SlicePlan.build(load_slice_config(path), facts, str(path))
        slices.append(TrainedSlice(plan.config.name, plan, str(path)))
    unique: dict[str, TrainedSlice] = {}
    for entry in slices:
        unique.setdefault(entry.plan.submodel_id, entry)
    return list(unique.values())


def slice_for_step(slices: list[TrainedSlice], full_share: float, seed: int, step: int) -> TrainedSlice:
    """The slice step `step` trains: the full model with probability `full_share`, else one of
    the others, uniformly. A function of (seed, step) alone, so a resumed run samples as an
    uninterrupted one."""
    if len(slices) == 1:
        return slices[0]
    generator = random.Random(f"{seed}/{step}")  # a str seed hashes with SHA-512: stable across runs
    if generator.random() < full_share:
        return slices[0]
    return generator.choice(slices[1:])
