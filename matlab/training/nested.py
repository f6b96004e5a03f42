"""Training through the elastic core: a submodel's loss trains the full model's tensors.

`matlab.core.elastic.submodel_outputs` runs a submodel on views of the full model's own
weights (the nano MatFormer's training; healing a slice's kept weights). `NestedLora` is one PEFT LoRA adapter on
the full model, trained through any of its submodels: PEFT adds the LoRA layers
(`inject_adapter_in_model`) to elastic skeletons (`build_submodel`: the family's model whose
weights are views of the full model's), to the full model's own (the identity plan), whose
LoRA tensors are the adapter, and to each submodel's. A submodel runs with
`torch.func.functional_call`, its LoRA tensors given as views of the adapter's, cut by the
plan's `tensor_spec` exactly as `matlab.slicing.adapters` cuts a saved adapter (B's kept rows, A's kept
columns), so its gradients land in the one adapter that `matformer slice --adapter` cuts to
every size. The base weights stay frozen: the skeletons' own views of them serve every step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from matlab.arch.facts import ArchFacts
from matlab.core.elastic import build_submodel
from matlab.errors import InputError
from matlab.families import Family
from matlab.io.reader import CheckpointFiles
from matlab.plan import SlicePlan, TensorSpec
from matlab.slicing.adapters import PEFT_PREFIX, SlicedAdapter, cut_tensor, lora_tensor_spec, quiet_peft

ADAPTER_NAME = "default"  # PEFT's name for the one adapter of a model
_LORA_PARAMETER = re.compile(rf"(?P<module>.+)(?P<suffix>\.lora_[AB])\.{ADAPTER_NAME}\.weight")


def lora_targets(family: Family) -> str:
    """The modules LoRA adapts, as a PEFT target regex: every attention projection and FFN matrix
    of the decoder layers (the family's names; in either layout of the checkpoint, never a
    tower's, whose modules are not in numbered `layers`)."""
    modules = [name.removesuffix(".weight") for name in (*family.attention_tensors, *family.ffn_cuts)]
    layer = family.layer_tensor.pattern.removesuffix("(.+)").replace("(", "(?:")  # layers\.(?:\d+)\.
    return rf"(?:.*\.)?{layer}(?:{'|'.join(re.escape(module) for module in modules)})"


def check_lora_rank(rank: int, family: Family, files: CheckpointFiles, option: str = "--lora-rank") -> None:
    """Refuse a rank above the smaller dimension of a weight LoRA would adapt (read from the
    checkpoint's headers, before PEFT allocates rank x dimension tensors for every layer)."""
    targets = re.compile(lora_targets(family))
    dimensions = sorted((min(info.shape), name) for name, info in files.tensors.items()
                        if len(info.shape) == 2 and targets.fullmatch(name.removesuffix(".weight")))
    if dimensions and rank > dimensions[0][0]:
        smallest, name = dimensions[0]
        raise InputError(f"{option} {rank}: above the dimensions of {name} {list(files.tensors[name].shape)}; a LoRA "
                         f"rank is at most the smaller dimension of every weight it adapts: use {option} {smallest} "
                         "or less")


def lora_config(family: Family, rank: int, alpha: float):
    """The adapter's LoraConfig: no dropout (a step's result depends on its data alone, so a
    resumed run repeats the lost steps exactly) and nothing `matlab.slicing.adapters` cannot cut."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(family))


@dataclass
class _Skeleton:
    model: nn.Module
    # LoRA parameter of the skeleton -> (adapter parameter name, spec that cuts it from the adapter's)
    cuts: dict[str, tuple[str, TensorSpec]]


class NestedLora:
    """A LoRA adapter on a loaded (frozen) full model, run at any plan of it."""

    def __init__(self, model: nn.Module, facts: ArchFacts, rank: int, alpha: float):
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model, self.facts = model, facts
        self.config = lora_config(facts.family, rank, alpha)
        self.identity = SlicePlan.identity(facts)
        self._shapes = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
        self._skeletons: dict[str, _Skeleton] = {}
        self.full = self._with_lora(self.identity)
        self.adapter = {name: parameter for name, parameter in self.full.named_parameters()
                        if _LORA_PARAMETER.fullmatch(name)}
        for parameter in self.adapter.values():
            parameter.requires_grad_(True)

    def _with_lora(self, plan: SlicePlan) -> nn.Module:
        from peft import inject_adapter_in_model

        with quiet_peft():
            model = inject_adapter_in_model(self.config, build_submodel(self.model, plan), adapter_name=ADAPTER_NAME)
        return model.train()

    def _skeleton(self, plan: SlicePlan) -> _Skeleton:
        """The plan's skeleton with LoRA layers and how each of its LoRA tensors is cut from the
        adapter's; built once per plan (PEFT's injection and the meta-device build cost ~0.4 s
        on nano, as much as a training step)."""
        cached = self._skeletons.get(plan.submodel_id)
        if cached is not None:
            return cached
        cuts = {}
        for name, parameter in self.adapter.items():
            match = _LORA_PARAMETER.fullmatch(name)
            weight = match["module"] + ".weight"
            spec = plan.tensor_spec(weight, self._shapes[weight])
            if spec is not None:  # None: the layer is skipped
                target = f"{spec.target.removesuffix('.weight')}{match['suffix']}.{ADAPTER_NAME}.weight"
                cuts[target] = (name, lora_tensor_spec(spec, name, target, tuple(parameter.shape), match["suffix"]))
        self._skeletons[plan.submodel_id] = _Skeleton(self._with_lora(plan), cuts)
        return self._skeletons[plan.submodel_id]

    def __call__(self, plan: SlicePlan, **inputs) -> object:
        """The outputs of the submodel of `plan` (the full model for the identity plan) on `inputs`,
        differentiable in the adapter's tensors."""
        if plan.submodel_id == self.identity.submodel_id:
            return self.full(**inputs)
        skeleton = self._skeleton(plan)
        views = {target: cut_tensor(self.adapter[source], spec) for target, (source, spec) in skeleton.cuts.items()}
        return functional_call(skeleton.model, views, args=(), kwargs=inputs, strict=False)

    def adapter_for(self, checkpoint_facts: ArchFacts, base_model: str) -> SlicedAdapter:
        """The adapter in PEFT's saved form, named as the checkpoint names its weights (either
        layout), so that `matformer slice --adapter` and PEFT read it against that checkpoint."""
        family, tensors = self.facts.family, {}
        for name, parameter in self.adapter.items():
            match = _LORA_PARAMETER.fullmatch(name)
            relative = family.text_relative(match["module"] + ".weight", False).removesuffix(".weight")
            tensors[f"{PEFT_PREFIX}{checkpoint_facts.text_prefix}{relative}{match['suffix']}.weight"] = \
                parameter.detach().to("cpu", torch.float32).contiguous()
        self.config.base_model_name_or_path = base_model
        return SlicedAdapter(self.config, tensors, 0)

    def load_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the adapter's tensors (by their names here) from a saved training state."""
        with torch.no_grad():
            for name, parameter in self.adapter.items():
                parameter.copy_(tensors[name])

    @torch.no_grad()
    def merge(self) -> list[str]:
        """Add the adapter to the full model's own weights (PEFT's delta, `get_delta_weight`), so
        that every slice of the model is that slice merged; returns the weights changed."""
        from peft.tuners.lora import LoraLayer

        weights = dict(self.model.named_parameters())
        changed = []
        for name, module in self.full.named_modules():
            if isinstance(module, LoraLayer):
                weight = weights[name + ".weight"]
                weight.add_(module.get_delta_weight(ADAPTER_NAME).to(weight.dtype))
                changed.append(name + ".weight")
        return changed
