"""Elastic submodels: any Mix-n-Match submodel of a loaded full model, sharing its weights.

A submodel is transformers' own `Gemma3nForCausalLM`, built on the meta device with the
sliced config, whose parameters are views into the full model's storage, chosen by the
same per-tensor plan the slicer uses (FFN rows and columns as views, skipped layers simply
absent). The two tables whose kept part is not one strided view when middle layers are
skipped (the PLE table's column blocks and the per-layer projection's row blocks) are read
through small modules that select the kept layers' blocks at run time. Building or dropping
a submodel copies no weights and touches no disk.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import Gemma3nForCausalLM

from matlab.core.loading import empty_model
from matlab.plan import SlicePlan, TensorSpec

_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")
_PLE = "model.embed_tokens_per_layer.weight"
_PROJECTION = "model.per_layer_model_projection.weight"


class KeptBlocksEmbedding(nn.Module):
    """Looks tokens up in the full PLE table and keeps the kept layers' column blocks."""

    def __init__(self, full: nn.Module, columns: torch.Tensor):
        super().__init__()
        self.full = full
        self.register_buffer("columns", columns, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.full(input_ids)
        return embedded.index_select(-1, self.columns.to(embedded.device))


class KeptBlocksProjection(nn.Module):
    """Projects with the full per-layer projection and keeps the kept layers' row blocks."""

    def __init__(self, full: nn.Linear, rows: torch.Tensor):
        super().__init__()
        self.full = full
        self.register_buffer("rows", rows, persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.full(hidden).index_select(-1, self.rows)


def _view(parameter: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    view = parameter
    if spec.rows is not None:
        (start, stop), = spec.rows
        view = view[start:stop]
    if spec.cols is not None:
        (start, stop), = spec.cols
        view = view[:, start:stop]
    return view


def _index(ranges, device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(start, stop, device=device) for start, stop in ranges])


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    owner_name, _, attribute = name.rpartition(".")
    owner = root.get_submodule(owner_name)
    if parameter:
        owner._parameters[attribute] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attribute] = value


def parameter_views(full: Gemma3nForCausalLM, plan: SlicePlan) -> tuple[dict[str, torch.Tensor], dict[str, TensorSpec]]:
    """Submodel parameter name -> view of the full model's tensor, plus the multi-block specs
    (PLE table, per-layer projection) that no single view can express."""
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


def build_submodel(full: Gemma3nForCausalLM, plan: SlicePlan) -> Gemma3nForCausalLM:
    """A runnable submodel of `full` whose weights are views of the full model's storage.

    `plan` must be built on the facts of the full model's text layout
    (`matlab.core.loading.text_facts`).
    """
    dtype = full.model.embed_tokens.weight.dtype
    device = full.model.embed_tokens.weight.device
    submodel = empty_model(plan.facts_for_submodel(), dtype)
    views, blocks = parameter_views(full, plan)
    expected = {name for name, _ in submodel.named_parameters()}
    for name in expected - set(blocks) - {"lm_head.weight"}:
        _set_tensor(submodel, name, views[name], parameter=True)
    full_buffers = dict(full.named_buffers())
    for name, _ in list(submodel.named_buffers()):
        source = _LAYER.sub(lambda m: f"{m.group(1)}layers.{plan.kept_layers[int(m.group(2))]}.", name)
        if source in full_buffers:
            _set_tensor(submodel, name, full_buffers[source], parameter=False)
    if _PLE in blocks:
        submodel.model.embed_tokens_per_layer = KeptBlocksEmbedding(full.model.embed_tokens_per_layer,
                                                                    _index(blocks[_PLE].cols, device))
    if _PROJECTION in blocks:
        submodel.model.per_layer_model_projection = KeptBlocksProjection(full.model.per_layer_model_projection,
                                                                         _index(blocks[_PROJECTION].rows, device))
    if submodel.config.tie_word_embeddings:
        submodel.lm_head.weight = submodel.model.embed_tokens.weight
    else:
        submodel.lm_head.weight = full.lm_head.weight
    submodel.config._attn_implementation = full.config._attn_implementation
    submodel.generation_config = full.generation_config
    return submodel.to(device).eval()
