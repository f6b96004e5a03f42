"""Select a submodel of a loaded model: the full model, or an elastic Mix-n-Match slice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from matlab.core.elastic import build_submodel
from matlab.core.loading import LoadedModel
from matlab.plan import SlicePlan
from matlab.slice_config import SliceConfig
from matlab.validation import Problem


@dataclass
class Submodel:
    """A runnable model plus what it is: its plan and the bytes a deployed copy would hold."""

    model: PreTrainedModel
    plan: SlicePlan
    tokenizer: object | None
    weight_bytes: int
    ple_bytes: int
    warnings: tuple[Problem, ...] = ()

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def name(self) -> str:
        return self.plan.config.name


def deployed_weight_bytes(loaded: LoadedModel, plan: SlicePlan) -> tuple[int, int]:
    """(all weights, PLE table) in bytes that the sliced text model would hold at the loaded
    dtype: the tensors transformers allocates for it (unused consumer k/v are not counted)."""
    total = ple = 0
    family = loaded.facts.family
    for name, parameter in loaded.model.named_parameters():
        spec = plan.tensor_spec(name, tuple(parameter.shape))
        if spec is None:
            continue
        size = spec.numel * parameter.element_size()
        total += size
        if name == family.text_prefix + family.ple_table:
            ple += size
    return total, ple


def select_submodel(loaded: LoadedModel, config: SliceConfig | None, source: str = "config") -> Submodel:
    """The full model (config None) or the elastic submodel for `config`, sharing weights."""
    if config is None:
        plan = SlicePlan.identity(loaded.facts)
        model = loaded.model
    else:
        plan = SlicePlan.build(config, loaded.facts, source)
        model = build_submodel(loaded.model, plan)
    weight_bytes, ple_bytes = deployed_weight_bytes(loaded, plan)
    return Submodel(model, plan, loaded.tokenizer, weight_bytes, ple_bytes, plan.warnings)
