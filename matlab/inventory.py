"""Tensor inventories: every stored tensor's name, shape and dtype, without reading weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matlab.architecture import ArchFacts
from matlab.errors import CheckpointError
from matlab.io.reader import CheckpointFiles

INTEGER_DTYPES = {"int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
TORCH_TO_SAFETENSORS = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
# Tensors a KV-consumer layer stores in the released checkpoints although transformers 5
# does not allocate them (see GEMMA3N.md).
CONSUMER_KV_TENSORS = ("self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_norm.weight")


@dataclass(frozen=True)
class StoredTensor:
    shape: tuple[int, ...]
    dtype: str


Inventory = dict[str, StoredTensor]


def inventory_from_checkpoint(directory: str | Path) -> Inventory:
    """Names, shapes and dtypes from the safetensors headers of a checkpoint directory."""
    files = CheckpointFiles(directory)
    return {name: StoredTensor(info.shape, info.dtype) for name, info in files.tensors.items()}


def consumer_kv_shapes(facts: ArchFacts) -> dict[str, tuple[int, ...]]:
    """The k/v tensors the release stores in KV-consumer layers, with their shapes."""
    text = facts.text_config
    kv_width = int(text["num_key_value_heads"]) * int(text["head_dim"])
    shapes = {"self_attn.k_proj.weight": (kv_width, facts.hidden_size),
              "self_attn.v_proj.weight": (kv_width, facts.hidden_size),
              "self_attn.k_norm.weight": (int(text["head_dim"]),)}
    return {f"{facts.text_prefix}layers.{layer}.{suffix}": shape
            for layer in facts.kv_consumers for suffix, shape in shapes.items()}


def inventory_from_facts(facts: ArchFacts) -> Inventory:
    """The tensors a released checkpoint of this architecture stores, from transformers' own
    model classes built on the meta device (no memory, no weights), plus consumer k/v."""
    import torch
    from transformers import Gemma3nConfig, Gemma3nForCausalLM, Gemma3nForConditionalGeneration, Gemma3nTextConfig

    dtype = TORCH_TO_SAFETENSORS.get(facts.dtype, "F32")
    try:
        with torch.device("meta"):
            if facts.is_multimodal:
                model = Gemma3nForConditionalGeneration(Gemma3nConfig.from_dict(facts.config))
            else:
                model = Gemma3nForCausalLM(Gemma3nTextConfig.from_dict(facts.config))
    except ImportError as error:
        raise CheckpointError(f"{facts.name}: building the multimodal architecture needs timm "
                              f"(pip install 'matformer-lab[vision]'): {error}") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if facts.text_config.get("tie_word_embeddings", True) else set()
    inventory = {}
    for name, tensor in model.state_dict().items():  # parameters and persistent buffers, as saved
        if name not in tied:
            stored_dtype = dtype if tensor.is_floating_point() else INTEGER_DTYPES[str(tensor.dtype).removeprefix("torch.")]
            inventory[name] = StoredTensor(tuple(tensor.shape), stored_dtype)
    for name, shape in consumer_kv_shapes(facts).items():
        inventory.setdefault(name, StoredTensor(shape, dtype))
    return inventory
