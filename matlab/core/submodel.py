"""Select a submodel of a loaded model: the full model, or an elastic Mix-n-Match slice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.core.elastic import build_submodel
from matlab.core.formatted import formatted_weights
from matlab.core.loading import LoadedModel
from matlab.formats.cache import FormatCache
from matlab.plan import SlicePlan
from matlab.plan.tensor_formats import tensor_formats
from matlab.slice_config import SliceConfig
from matlab.slice_config.validation import Problem


@dataclass
class Submodel:
    """A runnable model plus what it is: its plan and the bytes a deployed copy would hold."""

    model: PreTrainedModel
    plan: SlicePlan
    tokenizer: object | None
    weight_bytes: int
    ple_bytes: int
    warnings: tuple[Problem, ...] = ()
    weight_formats: str | None = None  # the GGUF formats its weights are held in ("q4_0/q8_0"); None: the dtype

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


def format_cache(loaded: LoadedModel) -> FormatCache:
    """The loaded model's round trips through weight formats (made once, then shared)."""
    if loaded.format_cache is None:  # the per-layer table is read by token rows: packed by the rows used
        family = loaded.facts.family
        loaded.format_cache = FormatCache(loaded.model, rows_only=(loaded.facts.text_prefix + family.ple_table,))
    return loaded.format_cache


def file_bytes(loaded: LoadedModel, config: SliceConfig, source: str = "config") -> tuple[int, int, str]:
    """(text tensors, PLE table) in bytes of the GGUF file of `config`'s slice at its weight
    formats, every tensor the checkpoint stores as llama.cpp's converter writes it; and the
    2-D weights' formats ("q4_0/q8_0")."""
    facts = facts_from_checkpoint(loaded.directory)
    plan = SlicePlan.build(config, facts, source)
    total = ple = 0
    used = set()
    for tensor in tensor_formats(plan, inventory_from_checkpoint(loaded.directory)):
        total += tensor.nbytes
        used |= {tensor.format} if len(tensor.shape) > 1 else set()
        if facts.family.group(tensor.name, facts.is_multimodal) == "ple":
            ple += tensor.nbytes
    return total, ple, "/".join(sorted(used))


def select_submodel(loaded: LoadedModel, config: SliceConfig | None, source: str = "config") -> Submodel:
    """The full model (config None) or the elastic submodel for `config`, sharing weights; with
    `weight_formats`, each weight as the config's GGUF formats hold it (`matlab.formats.cache`),
    and the bytes are that file's."""
    if config is None:
        plan = SlicePlan.identity(loaded.facts)
        model = loaded.model
    else:
        plan = SlicePlan.build(config, loaded.facts, source)
        formatted = formatted_weights(format_cache(loaded), plan, loaded.dtype, loaded.device) \
            if config.weight_formats else None
        model = build_submodel(loaded.model, plan, formatted)
    if config is not None and config.weight_formats is not None:
        weight_bytes, ple_bytes, formats = file_bytes(loaded, config, source)
    else:
        (weight_bytes, ple_bytes), formats = deployed_weight_bytes(loaded, plan), None
    return Submodel(model, plan, loaded.tokenizer, weight_bytes, ple_bytes, plan.warnings, formats)
