"""An independent oracle: transformers' Gemma3nForCausalLM built directly with a sliced config
and weights cut from the full model by module, with no MatFormer Lab code involved."""

from __future__ import annotations

import torch


def load_full_text_model(directory):
    """The full language model as transformers loads it, from either layout."""
    from transformers import AutoConfig, Gemma3nForCausalLM, Gemma3nForConditionalGeneration

    config = AutoConfig.from_pretrained(directory)
    if config.model_type == "gemma3n":
        full = Gemma3nForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
        return full.model.language_model, full.config.text_config
    full = Gemma3nForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return full.model, full.config


def oracle_logits(directory, skipped: list[int], widths: list[int], input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return oracle_model(directory, skipped, widths)(input_ids=input_ids).logits


def oracle_model(directory, skipped: list[int], widths: list[int]):
    """transformers' own Gemma3nForCausalLM of the slice, its weights cut from the full model by module."""
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    text_model, text_config = load_full_text_model(directory)
    layers = text_config.num_hidden_layers
    kept = [layer for layer in range(layers) if layer not in skipped]
    first_shared = layers - text_config.num_kv_shared_layers
    fields = text_config.to_dict()
    fields.update(num_hidden_layers=len(kept), intermediate_size=list(widths),
                  layer_types=[text_config.layer_types[i] for i in kept],
                  activation_sparsity_pattern=[text_config.activation_sparsity_pattern[i] for i in kept],
                  num_kv_shared_layers=sum(1 for i in kept if i >= first_shared))
    sliced = Gemma3nForCausalLM(Gemma3nTextConfig(**{k: v for k, v in fields.items() if k != "model_type"}))
    block = text_config.hidden_size_per_layer_input
    columns = torch.cat([torch.arange(i * block, (i + 1) * block) for i in kept])
    with torch.no_grad():
        target = sliced.model
        for name in ("embed_tokens", "norm", "per_layer_projection_norm", "altup_projections",
                     "altup_unembed_projections"):
            getattr(target, name).load_state_dict(getattr(text_model, name).state_dict())
        target.embed_tokens_per_layer.weight.copy_(text_model.embed_tokens_per_layer.weight[:, columns])
        target.per_layer_model_projection.weight.copy_(text_model.per_layer_model_projection.weight[columns])
        for new, (old, width) in enumerate(zip(kept, widths)):
            state = {k: v for k, v in text_model.layers[old].state_dict().items()}
            state["mlp.gate_proj.weight"] = state["mlp.gate_proj.weight"][:width]
            state["mlp.up_proj.weight"] = state["mlp.up_proj.weight"][:width]
            state["mlp.down_proj.weight"] = state["mlp.down_proj.weight"][:, :width]
            target.layers[new].load_state_dict(state)
        sliced.tie_weights()
        return sliced.eval()
