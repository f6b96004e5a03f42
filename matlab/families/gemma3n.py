"""Gemma 3n: the family of the released E4B/E2B checkpoints, the nano model and the tests'.

Facts: FFN `gate_proj`/`up_proj` are [width, hidden] and
cut on rows, `down_proj` is [hidden, width] and cut on columns; the per-layer embedding table
`embed_tokens_per_layer` [vocab, layers * block] holds layer i's columns in block i and
`per_layer_model_projection` [layers * block, hidden] its rows; the last
`num_kv_shared_layers` layers reuse the KV of the last earlier layer of their attention type;
released checkpoints store k/v projections in those consumer layers although transformers 5
does not allocate them; the MatFormer was trained at each layer's base FFN width and its half.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from matlab.errors import CheckpointError
from matlab.families.base import Family


class Gemma3nFamily(Family):
    name = "gemma3n"
    text_model_type = "gemma3n_text"
    multimodal_model_type = "gemma3n"
    block_size_key = "hidden_size_per_layer_input"
    sparsity_key = "activation_sparsity_pattern"
    attention_types = ("sliding_attention", "full_attention")
    ffn_cuts = {"mlp.gate_proj.weight": 0, "mlp.up_proj.weight": 0, "mlp.down_proj.weight": 1}
    layer_blocks = {"embed_tokens_per_layer.weight": 1, "per_layer_model_projection.weight": 0}
    # Effective parameters exclude the token embedding and the per-layer embedding table.
    ple_table = "embed_tokens_per_layer.weight"
    embedding_groups = {"embed_tokens_per_layer.": "ple", "embed_tokens.": "embeddings"}
    component_groups = {"audio": ("model.audio_tower.",), "vision": ("model.vision_tower.",),
                        "multimodal_embedders": ("model.embed_vision.", "model.embed_audio.")}
    attention_tensors = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                         "self_attn.o_proj.weight")
    # llama.cpp's ALTUP_CORRECT_COEF and ALTUP_PREDICT_COEF (4x4 and 16x4).
    gguf_float32_tensors = ("altup.correction_coefs.weight", "altup.prediction_coefs.weight")
    # The loader reads the per-layer table as [layers * block, vocab_size] (262400 rows at E4B);
    # the checkpoint stores vocab_size_per_layer_input rows (262144).
    gguf_vocab_tables = ("embed_tokens_per_layer.weight",)
    # llama-quantize's names: attn_*, ffn_*, token_embd and per_layer_token_embd (the tied
    # output); it never quantizes altup*, laurel* and per_layer_model_proj (src/llama-quant.cpp).
    gguf_categories = {"self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
                       "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
                       "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up",
                       "mlp.down_proj.weight": "ffn_down", "embed_tokens.weight": "token_embd",
                       "embed_tokens_per_layer.weight": "token_embd"}
    gguf_kept_tensors = ("altup", "laurel", "per_layer_model_projection")
    text_model_class_name = "Gemma3nForCausalLM"
    multimodal_model_class_name = "Gemma3nForConditionalGeneration"
    consumer_kv_tensors = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")

    def per_layer_keys(self) -> tuple[str, ...]:
        return (*super().per_layer_keys(), self.sparsity_key)

    def layer_entry(self, key: str) -> tuple[Callable[[Any], bool], str]:
        if key == self.sparsity_key:  # a Gaussian top-k quantile: 1.0 would keep no activation
            return (lambda sparsity: isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool)
                    and 0.0 <= sparsity < 1.0), "a sparsity from 0 up to (not including) 1"
        return super().layer_entry(key)

    def size_keys(self) -> tuple[str, ...]:
        # What the accounting reads (`stored_unallocated`) and transformers sizes the model by.
        return (*super().size_keys(), "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "vocab_size_per_layer_input")

    def normalize_text_config(self, text_config: dict[str, Any], source: str, key_prefix: str = "") -> dict[str, Any]:
        """Released configs state every per-layer list; then torch is never imported (it alone
        costs the slicer ~0.8 GB of resident memory). Otherwise transformers' config class
        fills in its own defaults (`layer_types` from the sliding/full pattern and so on), after
        the fields the config does state are checked (a layer count of 10**9 would otherwise
        build lists of that length)."""
        if all(isinstance(text_config.get(key), list) for key in (self.layer_types_key, self.sparsity_key)):
            return super().normalize_text_config(text_config, source, key_prefix)
        self.check_text_config(text_config, source, key_prefix, present_only=True)
        from huggingface_hub.errors import StrictDataclassError
        from transformers import Gemma3nTextConfig

        fields = {key: value for key, value in text_config.items() if key not in ("model_type", "architectures")}
        try:
            normalized = Gemma3nTextConfig(**fields).to_dict()
        except (TypeError, ValueError, StrictDataclassError) as error:
            reason = " ".join(str(error).split())  # transformers' messages span lines
            reason = reason if len(reason) <= 300 else reason[:297] + "..."
            where = key_prefix.rstrip(".") or "the text config"
            raise CheckpointError(f"{source}: {where} is not a valid Gemma 3n config ({reason}); fix or re-download "
                                  "config.json") from None
        normalized.pop("transformers_version", None)
        return super().normalize_text_config(normalized, source, key_prefix)

    def sparse_layers(self, text_config: dict[str, Any]) -> list[int]:
        """Layers with Gaussian top-k activation sparsity (E4B: the first 10)."""
        return [layer for layer, sparsity in enumerate(text_config[self.sparsity_key]) if sparsity > 0.0]

    def stored_unallocated(self, text_config: dict[str, Any], prefix: str,
                           kv_consumers: list[int]) -> dict[str, tuple[int, ...]]:
        head_dim, hidden = int(text_config["head_dim"]), int(text_config["hidden_size"])
        kv_width = int(text_config["num_key_value_heads"]) * head_dim
        shapes = dict(zip(self.consumer_kv_tensors, ((kv_width, hidden), (kv_width, hidden), (head_dim,))))
        return {f"{prefix}layers.{layer}.{suffix}": shape for layer in kv_consumers for suffix, shape in shapes.items()}

    def text_model(self, text_config: dict[str, Any]):
        from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

        config = Gemma3nTextConfig.from_dict({k: v for k, v in text_config.items() if k != "model_type"})
        return Gemma3nForCausalLM(config)

    def multimodal_model(self, config: dict[str, Any]):
        from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

        try:
            return Gemma3nForConditionalGeneration(Gemma3nConfig.from_dict(config))
        except ImportError as error:
            raise CheckpointError(f"building the multimodal Gemma 3n needs timm for its vision tower "
                                  f"(pip install 'matformer-lab[vision]'), or work on the text model with "
                                  f"--text-only ({str(error).strip().splitlines()[0]})") from None

    def init_buffers(self, model, module) -> None:
        # Called on the inner text model: its `_init_weights` reads `self.hidden_size`; on meta
        # parameters it is a no-op, so only the buffers are filled.
        model.model._init_weights(module)


GEMMA3N = Gemma3nFamily()
