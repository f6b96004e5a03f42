"""A plan's weights at its config's weight formats, for `build_submodel`: each weight as the
shipped GGUF file holds it, from the round trips kept in a `matlab.formats.cache.FormatCache`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from matlab.formats.cache import EXACT_FORMATS, FormatCache
from matlab.formats.tensors import TensorFormat
from matlab.plan import SlicePlan, TensorSpec
from matlab.plan.tensor_formats import layer_formats, tensor_format


@dataclass(frozen=True)
class FormattedWeights:
    """The weights of one plan's submodel at the plan's formats, for `build_submodel`."""

    cache: FormatCache
    formats: dict[str, TensorFormat]  # by the loaded model's parameter name

    def __call__(self, name: str, spec: TensorSpec) -> tuple[torch.Tensor, bool] | None:
        """What `build_submodel` takes for parameter `name`: None to use the model's own weight."""
        stored = self.formats.get(name)
        if stored is None or stored.format in EXACT_FORMATS.get(self.cache.parameters[name].dtype, ()):
            return None
        return self.cache.weight(name, spec, stored.format)


def formatted_weights(cache: FormatCache, plan: SlicePlan) -> FormattedWeights | None:
    """The plan's weights at its config's `weight_formats` (None when it names none). `plan`
    is built on the loaded model's (text-only) facts."""
    if plan.config.weight_formats is None:
        return None
    layers = layer_formats(plan)
    formats = {}
    for name, parameter in cache.parameters.items():
        stored = tensor_format(plan, name, tuple(parameter.shape), layers)
        if stored is not None:
            formats[name] = stored
    return FormattedWeights(cache, formats)
