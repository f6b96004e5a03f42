"""The checkpoint layout each runtime reads, as `slice --runtime R` writes it.

Measured (reports/runtimes.md): mlx-lm 0.32 has only the multimodal Gemma 3n layout (it
refuses `gemma3n_text`), reads the legacy RoPE keys `rope_theta` / `rope_local_base_freq`,
and allocates k/v in every layer, as llama.cpp's loader does. Released checkpoints store
those tensors in the KV-shared layers; checkpoints written by transformers 5 do not, and there
zeros stand in: a KV-shared layer reads its producer's cache, so the values are never used
(the conformance runs compare the log-probs, so this is checked, not assumed). Ollama reads
one scalar FFN width (its converter declares `IntermediateSize uint32`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from matlab.io.writer import OutputTensor
from matlab.plan import SlicePlan, TensorSpec

# Runtimes whose loaders allocate k/v (and k_norm) in every layer, KV-shared ones included.
FILL_CONSUMER_KV = ("mlx-lm", "llama.cpp")
MLX_LM = "mlx-lm"


def text_weights_only(runtime: str | None, text_only: bool) -> bool:
    """Whether the towers are dropped: asked for, or mlx-lm (it drops them on load anyway)."""
    return text_only or runtime == MLX_LM


def target_spec(runtime: str | None, plan: SlicePlan, spec: TensorSpec) -> TensorSpec:
    """`spec` renamed for `runtime`: mlx-lm reads the text weights under the multimodal prefix."""
    family = plan.facts.family
    if runtime == MLX_LM and spec.target.startswith(family.text_prefix):
        return replace(spec, target=family.multimodal_text_prefix + spec.target.removeprefix(family.text_prefix))
    return spec


def output_text_prefix(runtime: str | None, plan: SlicePlan, text_only: bool) -> str:
    family = plan.facts.family
    multimodal = runtime == MLX_LM or (plan.facts.is_multimodal and not text_only)
    return family.multimodal_text_prefix if multimodal else family.text_prefix


def consumer_kv_fills(runtime: str | None, plan: SlicePlan, text_only: bool, present: set[str],
                      dtype: str) -> list[OutputTensor]:
    """The KV-shared layers' k/v tensors `runtime` needs and the output would lack (zeros)."""
    if runtime not in FILL_CONSUMER_KV or not plan.num_kv_shared_layers:
        return []
    prefix = output_text_prefix(runtime, plan, text_only)
    kept = len(plan.kept_layers)
    consumers = list(range(kept - plan.num_kv_shared_layers, kept))
    shapes = plan.facts.family.stored_unallocated(plan.sliced_text_config(), prefix, consumers)
    return [OutputTensor(name, dtype, shape) for name, shape in shapes.items() if name not in present]


def layout_config(plan: SlicePlan, text_only: bool, runtime: str | None) -> dict[str, Any]:
    """The config.json `runtime` reads for this slice."""
    if runtime != MLX_LM:
        return plan.sliced_config(text_only, scalar_width=runtime == "ollama")
    text_config = with_legacy_rope_keys(plan.sliced_text_config())
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
