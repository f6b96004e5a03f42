"""The GGUF format and exact bytes of every tensor in a slice's language-model file.

A slice config's `weight_formats` names a format per group (token embedding, per-layer
table, each kept layer's attention and FFN, `default` for the rest); this module turns that
into one format per stored tensor of the slice, by the converter's rules
(`matlab.formats.tensors`), so the bytes are those of the file it writes. What is the plan's:

- Tables the loader sizes by the vocabulary (`gguf_vocab_tables`: Gemma 3n's per-layer
  embedding table, stored with 262144 rows at E4B) are padded with zero rows to `vocab_size`
  (262400) by the converter, and counted at that size.
- The down projection's rows are the FFN width, which the config chooses, so there
  `matformer validate` refuses a width off the block instead of a fallback.
- Only text tensors: llama.cpp writes the audio and vision towers to a separate mmproj file.

At E4B size every 2-D text tensor's rows are whole 32-element blocks (hidden 2048, FFN widths
8192/16384 in the official configs, PLE block 256, LAuReL rank 64), so the 32-element formats
never fall back there; a 256-element block (the K-quants) would not fit LAuReL's
linear_right [2048, 64]. The tiny test models (hidden 64, PLE block 8, rank 4) do fall back.

The bytes are those of the tensor data. The file adds its header and metadata (the tokenizer,
a few MB for Gemma 3n) and aligns each tensor's data to 32 bytes. llama-quantize, run on an
f16/bf16 file, leaves tensors named altup*, laurel* and per_layer_model_proj at the file's type
and picks its own type for the tied token embedding unless told one; an export through it must
pass every type explicitly (and keep those three groups at the source type) to match.
"""

from __future__ import annotations

from collections import Counter

from matlab.arch.inventory import Inventory
from matlab.formats.tensors import FormatCost, TensorFormat, stored_format
from matlab.plan import SlicePlan
from matlab.slice_config.fields import collapse
from matlab.slice_config.weight_formats import LayerFormats


def layer_formats(plan: SlicePlan) -> tuple[LayerFormats, ...] | None:
    """Each kept layer's attention and FFN formats; None when the config names no formats."""
    formats = plan.config.weight_formats
    return None if formats is None else formats.for_layers(plan.kept_layers)


def tensor_format(plan: SlicePlan, name: str, shape: tuple[int, ...],
                  layers: tuple[LayerFormats, ...] | None = None) -> TensorFormat | None:
    """The format of source tensor `name` in the slice's GGUF; None for a tensor the file does
    not hold (a skipped layer's, a tower's) or when the config names no formats. `layers`:
    `layer_formats(plan)`, passed when resolving many tensors."""
    formats = plan.config.weight_formats
    spec = plan.tensor_spec(name, shape, text_only=True)
    family, facts = plan.facts.family, plan.facts
    relative = family.text_relative(name, facts.is_multimodal)
    if formats is None or spec is None or (relative is None and not name.startswith(family.head_prefix)):
        return None
    relative = relative or name
    stored_shape = spec.shape
    match = family.layer_tensor.fullmatch(relative)
    suffix = match.group(2) if match else relative
    if len(stored_shape) < 2 or suffix in family.gguf_float32_tensors:
        return TensorFormat(name, stored_shape, stored_format(stored_shape, "f32", always_float32=True), "f32")
    if relative in family.gguf_vocab_tables:
        vocab = int(facts.text_config[family.vocab_size_key])
        stored_shape = (max(stored_shape[0], vocab), *stored_shape[1:])
    if match:
        layer = (layers or layer_formats(plan))[plan.new_index[int(match.group(1))]]
        asked = layer.ffn if suffix in family.ffn_cuts else \
            layer.attention if suffix in family.attention_tensors else formats.default
    else:
        group = family.group(name, facts.is_multimodal)
        asked = {"embeddings": formats.embeddings_format, "ple": formats.per_layer_embeddings_format}.get(
            group, formats.default)
    return TensorFormat(name, stored_shape, stored_format(stored_shape, asked), asked)


def tensor_formats(plan: SlicePlan, inventory: Inventory) -> list[TensorFormat]:
    """The format of every tensor of the slice's GGUF, in inventory order ([] without formats)."""
    if plan.config.weight_formats is None:
        return []
    layers = layer_formats(plan)
    resolved = (tensor_format(plan, name, stored.shape, layers) for name, stored in inventory.items())
    return [tensor for tensor in resolved if tensor is not None]


def format_cost(plan: SlicePlan, inventory: Inventory) -> FormatCost | None:
    """Exact bytes of the slice's text tensors at their formats; None when the config names none."""
    if plan.config.weight_formats is None:
        return None
    by_format: Counter[str] = Counter()
    fallbacks: list[tuple[str, str]] = []
    for tensor in tensor_formats(plan, inventory):
        by_format[tensor.format] += tensor.nbytes
        if tensor.fell_back:
            fallbacks.append((tensor.name, f"rows of {tensor.shape[-1]:,} are not whole {tensor.asked} blocks; "
                                           f"stored as {tensor.format}, as llama.cpp's converter does"))
    return FormatCost(sum(by_format.values()), dict(by_format), tuple(collapse(fallbacks)))
