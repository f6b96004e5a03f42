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

import torch
from torch import nn
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


def parameter_views(full: PreTrainedModel, plan: SlicePlan) -> tuple[dict[str, torch.Tensor], dict[str, TensorSpec]]:
    """Submodel parameter name -> view of the full model's tensor, plus the multi-block specs
    (layer-blocked tables) that no single view can express."""
    views, blocks = {}, {}
    for name, parameter in full.named_parameters():
        spec = plan.tensor_spec(name, tuple(parameter.shape))
        if spec is None:
            continue
        if len(spec.rows or ((0, 0),)) > 1 or len(spec.cols or ((0, 0),)) > 1:
            blocks[spec.target] = spec
        else:
            views[spec.target] = _view(parameter, spec)
    return views, blocks


def _kept_blocks(full: PreTrainedModel, spec: TensorSpec) -> KeptBlocks:
    """The wrapper for a layer-blocked table; a family blocks a table by layer only on its
    output features (an embedding's columns, a linear layer's rows)."""
    module = full.get_submodule(spec.source.removesuffix(".weight"))
    ranges = spec.cols if isinstance(module, nn.Embedding) else spec.rows
    index = torch.cat([torch.arange(start, stop) for start, stop in ranges])
    return KeptBlocks(module, index.to(module.weight.device))


def build_submodel(full: PreTrainedModel, plan: SlicePlan) -> PreTrainedModel:
    """A runnable submodel of `full` whose weights are views of the full model's storage.

    `plan` must be built on the facts of the full model's text layout (`ArchFacts.text_only`).
    """
    embeddings = full.get_input_embeddings().weight
    submodel = empty_model(plan.facts_for_submodel(), embeddings.dtype)
    views, blocks = parameter_views(full, plan)
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
    for target, spec in blocks.items():
        owner_name, _, attribute = target.removesuffix(".weight").rpartition(".")
        setattr(submodel.get_submodule(owner_name), attribute, _kept_blocks(full, spec))
    if submodel.config.tie_word_embeddings:
        submodel.get_output_embeddings().weight = submodel.get_input_embeddings().weight
    else:
        submodel.get_output_embeddings().weight = full.get_output_embeddings().weight
    submodel.config._attn_implementation = full.config._attn_implementation
    submodel.generation_config = full.generation_config
    return submodel.eval()
