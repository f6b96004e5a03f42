"""The checkpoint layout a runtime reads, as `slice --runtime R` writes it: driven by the
runtime record's `Layout` (`matlab.runtimes.base`), never by its name.

Measured (reports/runtimes.md): mlx-lm 0.32 has only the multimodal Gemma 3n layout, reads the
legacy RoPE keys and allocates k/v in every layer, as llama.cpp's loader does. Released
checkpoints store those tensors in the KV-shared layers; checkpoints written by transformers 5
do not, and there zeros stand in: a KV-shared layer reads its producer's cache, so the values
are never used (the conformance runs compare the log-probs, so this is checked, not assumed).
Ollama reads one scalar FFN width (its converter declares `IntermediateSize uint32`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from matlab.io.writer import OutputTensor
from matlab.plan import SlicePlan, TensorSpec
from matlab.runtimes import RUNTIMES
from matlab.runtimes.base import TRANSFORMERS_LAYOUT, Layout


def runtime_layout(runtime: str | None) -> Layout:
    """The layout `slice --runtime runtime` writes (transformers' without one)."""
    return RUNTIMES[runtime].layout if runtime else TRANSFORMERS_LAYOUT


def text_weights_only(layout: Layout, text_only: bool) -> bool:
    """Whether the towers are dropped: asked for, or the runtime drops them on load anyway."""
    return text_only or layout.text_weights_only


def target_spec(layout: Layout, plan: SlicePlan, spec: TensorSpec) -> TensorSpec:
    """`spec` renamed for the layout: text weights under the multimodal prefix where it says so."""
    family = plan.facts.family
    if layout.multimodal_text and spec.target.startswith(family.text_prefix):
        return replace(spec, target=family.multimodal_text_prefix + spec.target.removeprefix(family.text_prefix))
    return spec


def output_text_prefix(layout: Layout, plan: SlicePlan, text_only: bool) -> str:
    family = plan.facts.family
    multimodal = layout.multimodal_text or (plan.facts.is_multimodal and not text_only)
    return family.multimodal_text_prefix if multimodal else family.text_prefix


def consumer_kv_fills(layout: Layout, plan: SlicePlan, text_only: bool, present: set[str],
                      dtype: str) -> list[OutputTensor]:
    """The KV-shared layers' k/v tensors the layout needs and the output would lack (zeros)."""
    if not layout.fill_consumer_kv or not plan.num_kv_shared_layers:
        return []
    prefix = output_text_prefix(layout, plan, text_only)
    kept = len(plan.kept_layers)
    consumers = list(range(kept - plan.num_kv_shared_layers, kept))
    shapes = plan.facts.family.stored_unallocated(plan.sliced_text_config(), prefix, consumers)
    return [OutputTensor(name, dtype, shape) for name, shape in shapes.items() if name not in present]


def layout_config(plan: SlicePlan, text_only: bool, layout: Layout) -> dict[str, Any]:
    """The config.json the layout holds for this slice."""
    if not layout.multimodal_text:
        config = plan.sliced_config(text_only, scalar_width=layout.scalar_width)
        if layout.text_architecture and (text_only or not plan.facts.is_multimodal):
            config["architectures"] = [layout.text_architecture]
        return config
    text_config = plan.sliced_text_config()
    if layout.legacy_rope_keys:
        text_config = with_legacy_rope_keys(text_config)
    family = plan.facts.family
    return {"architectures": [family.multimodal_model_class_name], "model_type": family.multimodal_model_type,
            "text_config": text_config, "dtype": text_config.get("dtype")}


def with_legacy_rope_keys(text_config: dict[str, Any]) -> dict[str, Any]:
    """`rope_theta` (full attention) and `rope_local_base_freq` (sliding) beside transformers
    5's `rope_parameters`, where the config states only the latter (mlx-lm and transformers
    4.x read only the legacy keys and silently use their defaults otherwise)."""
    config = copy.deepcopy(text_config)
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict):
        for key, attention in (("rope_theta", "full_attention"), ("rope_local_base_freq", "sliding_attention")):
            theta = (parameters.get(attention) or {}).get("rope_theta")
            if key not in config and theta is not None:
                config[key] = theta
    return config
