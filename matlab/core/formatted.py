"""A plan's weights at its config's weight formats, for `build_submodel`: each weight as the
shipped GGUF file holds it, dequantized from the packed blocks a `matlab.formats.cache.FormatCache`
keeps when its module runs, and dropped after it ran (`LazyWeight`); a table read by token rows
(Gemma 3n's per-layer embeddings) is a module that dequantizes the rows it is asked for
(`FormattedRows`). So a submodel at its formats holds no float copy of its weights between
forward passes, and one module's weights during one, except those a search asked the cache to
keep for the next candidates (`FormatCache.keep_dequantized`; each new plan's weights mark a
new candidate for it).

Measured on a CPU (reports/benchmarks.md): dequantizing a module's weights as it runs costs about
as much as dequantizing the candidate's weights once before its forward pass and keeps memory at
one module's weights; on a GPU the dequantization would be done there, from packed blocks moved
once (not done here: no GPU dequantizer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from matlab.arch.inventory import StoredTensor
from matlab.formats.cache import EXACT_FORMATS, FormatCache
from matlab.formats.tensors import TensorFormat
from matlab.plan import SlicePlan, TensorSpec
from matlab.plan.tensor_formats import tensor_formats


@dataclass(frozen=True)
class LazyWeight:
    """A weight made when its module runs (`make()`), of this shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    make: Callable[[], torch.Tensor]


class FormattedRows(nn.Module):
    """An embedding table read by token rows at its format: the rows asked for, dequantized from
    the cache (packed on first use), cut to the kept layers' blocks (`spec.cols`), run through
    the table's own module (a scaled embedding scales them) as a table of those rows alone."""

    def __init__(self, cache: FormatCache, name: str, spec: TensorSpec, fmt: str, dtype: torch.dtype):
        super().__init__()
        self.cache, self.name, self.spec, self.fmt, self.dtype = cache, name, spec, fmt, dtype
        self.table = cache.model.get_submodule(name.removesuffix(".weight"))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        unique, positions = torch.unique(token_ids, return_inverse=True)
        module = copy.copy(self.table)
        rows = self.cache.rows(self.name, self.fmt, unique, self.spec.cols, self.dtype)
        module._parameters = {**module._parameters, "weight": nn.Parameter(rows, requires_grad=False)}
        return module(positions)


@dataclass(frozen=True)
class FormattedWeights:
    """The weights of one plan's submodel at the plan's formats, for `build_submodel`."""

    cache: FormatCache
    formats: dict[str, TensorFormat]  # by the loaded model's parameter name
    dtype: torch.dtype
    device: torch.device

    def __call__(self, name: str, spec: TensorSpec) -> tuple[LazyWeight | nn.Module, bool] | None:
        """What `build_submodel` takes for parameter `name`: None to use the model's own weight;
        else (a LazyWeight of the kept rows and columns, or a module for a table read by rows,
        True: already cut)."""
        stored = self.formats.get(name)
        if stored is None or stored.format in EXACT_FORMATS.get(self.dtype, ()):
            return None
        if name in self.cache.rows_only:
            return FormattedRows(self.cache, name, spec, stored.format, self.dtype), True
        return LazyWeight(spec.shape, self.dtype, self.device,
                          lambda: self.cache.weight(name, spec, stored.format, self.dtype, self.device)), True


def formatted_weights(cache: FormatCache, plan: SlicePlan, dtype: torch.dtype,
                      device: torch.device) -> FormattedWeights | None:
    """The plan's weights at its config's `weight_formats` (None when it names none). `plan`
    is built on the loaded model's (text-only) facts; `dtype` and `device` are the run's."""
    if plan.config.weight_formats is None:
        return None
    cache.next_candidate()
    inventory = {name: StoredTensor(tuple(parameter.shape), str(parameter.dtype))
                 for name, parameter in cache.parameters.items()}
    formats = {tensor.name: tensor for tensor in tensor_formats(plan, inventory)}
    return FormattedWeights(cache, formats, dtype, device)
