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
from dataclasses import dataclass

from matlab.arch.inventory import Inventory
from matlab.formats.presets import PresetTensor, preset_types
from matlab.formats.tensors import FormatCost, TensorFormat, llama_fallback, stored_format
from matlab.formats.types import K_QUANTS, block_size
from matlab.plan import SlicePlan
from matlab.slice_config.fields import collapse
from matlab.slice_config.weight_formats import LayerFormats

SOURCE_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def layer_formats(plan: SlicePlan) -> tuple[LayerFormats, ...] | None:
    """Each kept layer's attention and FFN formats; None when the config names no formats."""
    formats = plan.config.weight_formats
    return None if formats is None else formats.for_layers(plan.kept_layers)


@dataclass(frozen=True)
class _Stored:
    """What the rules need of one source tensor in the slice's file."""

    name: str
    shape: tuple[int, ...]  # as the GGUF stores it: sliced, padded to the vocabulary
    category: str  # llama.cpp's (`matlab.formats.presets.CATEGORIES`)
    always_float32: bool  # the converter writes it in F32 whatever the file's type
    layer: int | None  # its new layer index
    asked: str | None  # the format its group names (None under a preset)


def _stored(plan: SlicePlan, name: str, shape: tuple[int, ...], layers: tuple[LayerFormats, ...] | None,
            ) -> _Stored | None:
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
    if relative in family.gguf_vocab_tables:
        vocab = int(facts.text_config[family.vocab_size_key])
        stored_shape = (max(stored_shape[0], vocab), *stored_shape[1:])
    layer = plan.new_index[int(match.group(1))] if match else None
    asked = None
    if formats.preset is None:
        if match:
            entry = (layers or layer_formats(plan))[layer]
            asked = entry.ffn if suffix in family.ffn_cuts else \
                entry.attention if suffix in family.attention_tensors else formats.default
        else:
            group = family.group(name, facts.is_multimodal)
            asked = {"embeddings": formats.embeddings_format, "ple": formats.per_layer_embeddings_format}.get(
                group, formats.default)
    return _Stored(name, stored_shape, family.gguf_category(suffix), suffix in family.gguf_float32_tensors, layer,
                   asked)


def source_type(plan: SlicePlan) -> str:
    """The type of the GGUF llama-quantize reads: the checkpoint's own dtype, as the converter
    writes it (`--outtype`), so that quantizing it quantizes the checkpoint's own values."""
    return SOURCE_TYPES.get(plan.facts.dtype, "f32")


def uses_llama_quantize(plan: SlicePlan) -> bool:
    """Whether the slice's file is llama-quantize's (a preset, or a K-quant anywhere) rather than
    the converter's own (`export --type per-tensor` takes the same path)."""
    formats = plan.config.weight_formats
    if formats is None:
        return False
    named = {formats.default, formats.embeddings, formats.per_layer_embeddings,
             *(fmt for entry in formats.for_layers(plan.kept_layers) for fmt in (entry.attention, entry.ffn))}
    return formats.preset is not None or bool(named & set(K_QUANTS))


def _by_converter(tensor: _Stored) -> TensorFormat:
    if len(tensor.shape) < 2 or tensor.always_float32:
        return TensorFormat(tensor.name, tensor.shape, "f32", "f32")
    return TensorFormat(tensor.name, tensor.shape, stored_format(tensor.shape, tensor.asked), tensor.asked)


def _by_llama_quantize(tensor: _Stored, source: str) -> TensorFormat:
    """A tensor type asked of llama-quantize (`--tensor-type`): kept at the source type where it
    never quantizes, else the type or its fallback (`tensor_type_fallback`)."""
    if len(tensor.shape) < 2 or tensor.always_float32:
        return TensorFormat(tensor.name, tensor.shape, "f32", "f32")
    if tensor.category == "kept":
        return TensorFormat(tensor.name, tensor.shape, source, tensor.asked)
    return TensorFormat(tensor.name, tensor.shape, llama_fallback(tensor.shape[-1], tensor.asked), tensor.asked)


def tensor_formats(plan: SlicePlan, inventory: Inventory) -> list[TensorFormat]:
    """The format of every tensor of the slice's GGUF, in inventory order ([] without formats)."""
    formats = plan.config.weight_formats
    if formats is None:
        return []
    layers = None if formats.preset is not None else layer_formats(plan)
    stored = [tensor for name, info in inventory.items()
              if (tensor := _stored(plan, name, info.shape, layers)) is not None]
    if formats.preset is None:
        if uses_llama_quantize(plan):
            return [_by_llama_quantize(tensor, source_type(plan)) for tensor in stored]
        return [_by_converter(tensor) for tensor in stored]
    # llama.cpp visits the file's tensors by layer, then by name: its counters follow that order.
    order = sorted(range(len(stored)), key=lambda index: (-1 if stored[index].layer is None else stored[index].layer,
                                                           stored[index].name))
    visited = [PresetTensor("kept" if stored[index].always_float32 else stored[index].category,
                            stored[index].shape[-1], len(stored[index].shape)) for index in order]
    text = plan.facts.text_config
    gqa = int(text.get("num_attention_heads", 1)) // max(1, int(text.get("num_key_value_heads", 1)))
    source = source_type(plan)
    chosen = preset_types(formats.preset, visited, len(plan.kept_layers), gqa, source)
    types: dict[int, str] = {}
    for index, (fmt, _) in zip(order, chosen):
        tensor = stored[index]
        types[index] = "f32" if len(tensor.shape) < 2 or tensor.always_float32 else fmt
    return [TensorFormat(tensor.name, tensor.shape, types[index], formats.preset) for index, tensor in
            enumerate(stored)]


def tensor_format(plan: SlicePlan, name: str, shape: tuple[int, ...],
                  layers: tuple[LayerFormats, ...] | None = None) -> TensorFormat | None:
    """The format of source tensor `name` in the slice's GGUF; None for a tensor the file does
    not hold (a skipped layer's, a tower's) or when the config names no formats. `layers`:
    `layer_formats(plan)`, passed when resolving many tensors. A preset's types depend on the
    whole file: ask `tensor_formats` for those."""
    formats = plan.config.weight_formats
    if formats is not None and formats.preset is not None:
        raise ValueError("a preset's types depend on every tensor of the file: use tensor_formats")
    tensor = _stored(plan, name, shape, layers)
    if tensor is None:
        return None
    return _by_llama_quantize(tensor, source_type(plan)) if uses_llama_quantize(plan) else _by_converter(tensor)


def format_cost(plan: SlicePlan, inventory: Inventory) -> FormatCost | None:
    """Exact bytes of the slice's text tensors at their formats; None when the config names none."""
    if plan.config.weight_formats is None:
        return None
    by_format: Counter[str] = Counter()
    fallbacks: list[tuple[str, str]] = []
    llama_quantized = uses_llama_quantize(plan)
    for tensor in tensor_formats(plan, inventory):
        by_format[tensor.format] += tensor.nbytes
        if tensor.fell_back and plan.config.weight_formats.preset is None:
            if not llama_quantized:
                why = f"rows of {tensor.shape[-1]:,} are not whole {tensor.asked} blocks; stored as {tensor.format}, " \
                      "as llama.cpp's converter does"
            elif tensor.shape[-1] % block_size(tensor.asked):
                why = f"rows of {tensor.shape[-1]:,} are not whole {tensor.asked} blocks; stored as {tensor.format}, " \
                      "as llama-quantize does"
            else:
                why = f"llama-quantize does not quantize this tensor: stored as {tensor.format}, the source type"
            fallbacks.append((tensor.name, why))
    return FormatCost(sum(by_format.values()), dict(by_format), tuple(collapse(fallbacks)))
