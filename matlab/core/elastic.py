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
# a config's formats, `matlab.core.formatted`): given the parameter's name and spec, None (the
# parameter itself), or (a tensor of the parameter's shape, to be cut by the spec, False), or
# (the tensor, or a weight made when its module runs, or a module for a table, already cut, True).
WeightSource = Callable[[str, TensorSpec], "tuple[object, bool] | None"]


def _lazy(value: object) -> bool:
    return hasattr(value, "make") and hasattr(value, "shape")  # matlab.core.formatted.LazyWeight


def _placeholder(lazy) -> nn.Parameter:
    """A stand-in of the lazy weight's shape, dtype and device that holds one element (its
    strides are 0): what code reading a module's device or dtype between passes sees."""
    return nn.Parameter(torch.zeros((), dtype=lazy.dtype, device=lazy.device).expand(lazy.shape),
                        requires_grad=False)


def _hook_lazy(module: nn.Module, lazies: dict[str, object]) -> None:
    """Make `module`'s lazy weights just before it runs and drop them after: memory holds one
    module's weights at a time."""
    def make(module: nn.Module, args) -> None:
        for attribute, lazy in lazies.items():
            module._parameters[attribute] = nn.Parameter(lazy.make(), requires_grad=False)

    def drop(module: nn.Module, args, output) -> None:
        for attribute, lazy in lazies.items():
            module._parameters[attribute] = _placeholder(lazy)

    module.register_forward_pre_hook(make)
    module.register_forward_hook(drop)


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
        if len(spec.rows or ((0, 0),)) > 1 or len(spec.cols or ((0, 0),)) > 1 or isinstance(source, nn.Module):
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
    if isinstance(source, nn.Module):  # a table read by rows at its format, already cut
        return source
    module = full.get_submodule(spec.source.removesuffix(".weight"))
    if source is not None:
        module = copy.copy(module)
        module._forward_pre_hooks, module._forward_hooks = type(module._forward_hooks)(), type(module._forward_hooks)()
        weight = _placeholder(source) if _lazy(source) else nn.Parameter(source, requires_grad=False)
        module._parameters = {**module._parameters, "weight": weight}
        if _lazy(source):
            _hook_lazy(module, {"weight": source})
        if cut:
            return module
    ranges = spec.cols if isinstance(module, nn.Embedding) else spec.rows
    index = torch.cat([torch.arange(start, stop) for start, stop in ranges])
    return KeptBlocks(module, index.to(module.weight.device))


def _hook_tied(submodel: PreTrainedModel, lazy) -> None:
    """A lazy tied embedding: made once before the whole forward pass, for the input lookup and
    the output layer both, and dropped after it."""
    def make(module: nn.Module, args, kwargs) -> None:
        weight = nn.Parameter(lazy.make(), requires_grad=False)
        module.get_input_embeddings()._parameters["weight"] = weight
        module.get_output_embeddings()._parameters["weight"] = weight

    def drop(module: nn.Module, args, kwargs, output) -> None:
        placeholder = _placeholder(lazy)
        module.get_input_embeddings()._parameters["weight"] = placeholder
        module.get_output_embeddings()._parameters["weight"] = placeholder

    submodel.register_forward_pre_hook(make, with_kwargs=True)
    submodel.register_forward_hook(drop, with_kwargs=True)


def build_submodel(full: PreTrainedModel, plan: SlicePlan, weights: WeightSource | None = None) -> PreTrainedModel:
    """A runnable submodel of `full` whose weights are views of the full model's storage (or,
    for the tensors `weights` gives, of those: a config's weight formats).

    `plan` must be built on the facts of the full model's text layout (`ArchFacts.text_only`).
    """
    embeddings = full.get_input_embeddings().weight
    submodel = empty_model(plan.facts_for_submodel(), embeddings.dtype)
    views, blocks = parameter_views(full, plan, weights)
    head = plan.facts.family.head_prefix + "weight"
    lazies: dict[str, dict[str, object]] = {}  # module name -> its weights made when it runs
    for name in {name for name, _ in submodel.named_parameters()} - set(blocks) - {head}:
        value = views[name]
        if _lazy(value):
            owner, _, attribute = name.rpartition(".")
            lazies.setdefault(owner, {})[attribute] = value
            value = _placeholder(value)
        _set_tensor(submodel, name, value, parameter=True)
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
    embedding_owner = next(name for name, module in submodel.named_modules()
                           if module is submodel.get_input_embeddings())
    for owner, attributes in lazies.items():
        if owner == embedding_owner and submodel.config.tie_word_embeddings:
            continue  # made around the whole forward pass below: the output layer reads it too
        _hook_lazy(submodel.get_submodule(owner), attributes)
    if submodel.config.tie_word_embeddings:
        tied = lazies.get(embedding_owner, {}).get("weight")
        submodel.get_output_embeddings().weight = submodel.get_input_embeddings().weight
        if tied is not None:
            _hook_tied(submodel, tied)
    else:
        own = full.get_output_embeddings().weight
        formatted = views.get(head, own) if weights is not None else own
        if _lazy(formatted):
            _hook_lazy(submodel.get_output_embeddings(), {"weight": formatted})
            formatted = _placeholder(formatted)
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
