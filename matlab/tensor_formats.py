"""The GGUF format and exact bytes of every tensor in a slice's language-model file.

A slice config's `weight_formats` names a format per group (token embedding, per-layer
table, each kept layer's attention and FFN, `default` for the rest); this module turns that
into one format per stored tensor, by the rules of llama.cpp's converter
(`convert_hf_to_gguf.py`, `prepare_tensors`), so the bytes are those of the file it writes:

- 1-D tensors (norms, scales) are F32 whatever the file's type: the converter stores them so
  ("most of the codebase that takes in 1D tensors or norms only handles F32").
- The family's `gguf_float32_tensors` are F32 too (Gemma 3n's AltUp coefficients, 4x4 and
  16x4: the converter's ALTUP_CORRECT_COEF and ALTUP_PREDICT_COEF).
- A tensor whose rows are not whole blocks of its format is stored as F16: the converter's
  fallback when gguf refuses the shape, and llama-quantize's for a 32-element block type. Each
  is reported (`FormatCost.fallbacks`). The down projection's rows are the FFN width, which the
  config chooses, so there `matformer validate` refuses a width off the block instead.
- Tables the loader sizes by the vocabulary (`gguf_vocab_tables`: Gemma 3n's per-layer
  embedding table, stored with 262144 rows at E4B) are padded with zero rows to `vocab_size`
  (262400) by the converter, and counted at that size.
- Only text tensors: llama.cpp writes the audio and vision towers to a separate mmproj file.

At E4B size every 2-D text tensor's rows are whole 32-element blocks (hidden 2048, FFN widths
8192/16384 in the official configs, PLE block 256, LAuReL rank 64), so the offered formats
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

from matlab.formats import fits, tensor_bytes
from matlab.inventory import Inventory
from matlab.plan import SlicePlan
from matlab.weight_formats import LayerFormats
from matlab.yaml_fields import collapse

FALLBACK_FORMAT = "f16"


@dataclass(frozen=True)
class TensorFormat:
    """The format one tensor is stored in, and the one its group asked for (they differ on a fallback)."""

    name: str                # the source checkpoint's name
    shape: tuple[int, ...]   # as the GGUF stores it: sliced, padded to the vocabulary
    format: str
    asked: str

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.shape, self.format)

    @property
    def fell_back(self) -> bool:
        return self.format != self.asked


@dataclass(frozen=True)
class FormatCost:
    """Bytes of a slice's text tensors at their formats."""

    total_bytes: int
    bytes_by_format: dict[str, int]
    fallbacks: tuple[str, ...]  # one line per kind of fallback, naming the first few tensors

    @property
    def formats(self) -> str:
        return "/".join(sorted(self.bytes_by_format))


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
        return TensorFormat(name, stored_shape, "f32", "f32")
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
    stored = asked if fits(stored_shape[-1], asked) else FALLBACK_FORMAT
    return TensorFormat(name, stored_shape, stored, asked)


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
