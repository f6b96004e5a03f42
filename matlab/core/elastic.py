"""Elastic submodels: any Mix-n-Match submodel of a loaded full model, sharing its weights.

A submodel is the family's own transformers model (Gemma 3n: `Gemma3nForCausalLM`), built on
the meta device with the sliced config, whose parameters are views into the full model's
storage, chosen by the same per-tensor plan the slicer uses (FFN rows and columns as views,
skipped layers simply absent). The layer-blocked tables whose kept part is not one strided
view when middle layers are skipped (Gemma 3n's per-layer embedding table and per-layer
projection) are read through a small module that runs the full table and keeps the kept
layers' blocks of its output. Building or dropping a submodel copies no weights and touches
no disk.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call
from transformers import PreTrainedModel

from matlab.core.loading import empty_model
from matlab.plan import SlicePlan, TensorSpec


class KeptBlocks(nn.Module):
    """Runs a full layer-blocked module (an embedding whose columns, or a linear layer whose
    output rows, hold one block per layer) and keeps the kept layers' blocks of its output."""

    def __init__(self, full: nn.Module, index: torch.Tensor):
        super().__init__()
        self.full = full
        self.register_buffer("index", index, persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output = self.full(inputs)
        return output.index_select(-1, self.index.to(output.device))


def _view(parameter: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    view = parameter
    if spec.rows is not None:
        (start, stop), = spec.rows
        view = view[start:stop]
    if spec.cols is not None:
        (start, stop), = spec.cols
        view = view[:, start:stop]
    return view


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    owner_name, _, attribute = name.rpartition(".")
    owner = root.get_submodule(owner_name)
    if parameter:
        owner._parameters[attribute] = value if isinstance(value, nn.Parameter) else \
            nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attribute] = value


# Where a submodel's weight comes from instead of the full model's own parameter (the weights at
# a config's formats, `matlab.formats.cache`): given the parameter's name and spec, None (the
# parameter itself), or (a tensor of the parameter's shape, to be cut by the spec, False) or
# (the tensor already cut, True).
WeightSource = Callable[[str, TensorSpec], "tuple[torch.Tensor, bool] | None"]


def parameter_views(full: PreTrainedModel, plan: SlicePlan, weights: WeightSource | None = None,
                    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[TensorSpec, torch.Tensor | None, bool]]]:
    """Submodel parameter name -> view of the full model's tensor (or of `weights`' tensor),
    plus the multi-block specs (layer-blocked tables) that no single view can express, each with
    the tensor `weights` gives for it (None: the module's own) and whether that one is cut."""
    views, blocks = {}, {}
    for name, parameter in full.named_parameters():
        spec = plan.tensor_spec(name, tuple(parameter.shape))
        if spec is None:
            continue
        source, cut = (weights and weights(name, spec)) or (None, False)
        if len(spec.rows or ((0, 0),)) > 1 or len(spec.cols or ((0, 0),)) > 1:
            blocks[spec.target] = (spec, source, cut)
        else:
            views[spec.target] = source if cut else _view(parameter if source is None else source, spec)
    return views, blocks


def _kept_blocks(full: PreTrainedModel, spec: TensorSpec, source: torch.Tensor | None = None,
                 cut: bool = False) -> nn.Module:
    """The wrapper for a layer-blocked table; a family blocks a table by layer only on its
    output features (an embedding's columns, a linear layer's rows). With `source` the table
    is that tensor instead (the module shallow-copied around it); a `cut` one is already only
    the kept blocks, so the copy is the submodel's module itself."""
    module = full.get_submodule(spec.source.removesuffix(".weight"))
    if source is not None:
        module = copy.copy(module)
        module._parameters = {**module._parameters, "weight": nn.Parameter(source, requires_grad=False)}
        if cut:
            return module
    ranges = spec.cols if isinstance(module, nn.Embedding) else spec.rows
    index = torch.cat([torch.arange(start, stop) for start, stop in ranges])
    return KeptBlocks(module, index.to(module.weight.device))


def build_submodel(full: PreTrainedModel, plan: SlicePlan, weights: WeightSource | None = None) -> PreTrainedModel:
    """A runnable submodel of `full` whose weights are views of the full model's storage (or,
    for the tensors `weights` gives, of those: a config's weight formats).

    `plan` must be built on the facts of the full model's text layout (`ArchFacts.text_only`).
    """
    embeddings = full.get_input_embeddings().weight
    submodel = empty_model(plan.facts_for_submodel(), embeddings.dtype)
    views, blocks = parameter_views(full, plan, weights)
    head = plan.facts.family.head_prefix + "weight"
    for name in {name for name, _ in submodel.named_parameters()} - set(blocks) - {head}:
        _set_tensor(submodel, name, views[name], parameter=True)
    wanted_buffers = {name for name, _ in submodel.named_buffers()}
    for name, buffer in full.named_buffers():
        spec = plan.tensor_spec(name, tuple(buffer.shape))
        if spec is not None and spec.target in wanted_buffers:
            _set_tensor(submodel, spec.target, buffer, parameter=False)
    # Parameters are views on the full model's device already; the submodel's own buffers
    # (RoPE tables) are moved there. `.to()` is not used: the submodel still holds meta
    # placeholders for the layer-blocked tables, and the full tables must stay where the full
    # model keeps them (the per-layer embedding table may be kept on the CPU).
    for module in submodel.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != embeddings.device:
                module._buffers[name] = buffer.to(embeddings.device)
    for target, (spec, source, cut) in blocks.items():
        owner_name, _, attribute = target.removesuffix(".weight").rpartition(".")
        setattr(submodel.get_submodule(owner_name), attribute, _kept_blocks(full, spec, source, cut))
    if submodel.config.tie_word_embeddings:
        submodel.get_output_embeddings().weight = submodel.get_input_embeddings().weight
    else:
        own = full.get_output_embeddings().weight
        formatted = views.get(head, own) if weights is not None else own
        submodel.get_output_embeddings().weight = formatted if isinstance(formatted, nn.Parameter) else \
            nn.Parameter(formatted, requires_grad=False)
    submodel.config._attn_implementation = full.config._attn_implementation
    submodel.generation_config = full.generation_config
    return submodel.eval()


def submodel_outputs(full: nn.Module, plan: SlicePlan, skeleton: nn.Module | None = None, **inputs) -> object:
    """The outputs of the submodel of `plan` on `inputs`, its weights views of the full model's
    tensors under autograd, so that gradients land in the full model. `skeleton`: the plan's
    `build_submodel` result from an earlier call (building one costs as much as a nano step)."""
    skeleton = skeleton if skeleton is not None else build_submodel(full, plan)
    views, _ = parameter_views(full, plan)
    return functional_call(skeleton, views, args=(), kwargs=inputs, strict=False)
