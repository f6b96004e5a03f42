"""Exact parameter accounting of a base model or of a slice of it.

"Effective parameters" follow Google's definition: language-model parameters excluding the
embedding tables the family names (Gemma 3n: the token embedding and the per-layer embedding
table), counting every tensor the checkpoint stores (k/v of KV-consumer layers included).

Bytes are counted twice when the slice config names `weight_formats`: at the checkpoint's
stored dtypes (`total_bytes`, what `matformer slice` writes) and at those GGUF formats
(`format_bytes`, the text tensors' data in the GGUF file; `matlab.plan.tensor_formats`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from matlab.arch.facts import ArchFacts
from matlab.arch.inventory import Inventory
from matlab.plan import SlicePlan
from matlab.plan.tensor_formats import format_cost
from matlab.util.dtypes import SAFETENSORS_SIZES

GROUPS = ("embeddings", "ple", "text_other", "audio", "vision", "multimodal_embedders", "other")


@dataclass(frozen=True)
class ParamReport:
    """Parameter counts by group, and the bytes they take at their stored dtypes."""

    effective_params: int
    ple_params: int
    embedding_params: int
    text_params: int
    audio_params: int
    vision_params: int
    multimodal_embedder_params: int
    other_params: int
    total_params: int
    total_bytes: int
    text_bytes: int
    dtype: str
    # At the config's weight_formats (None without them): text tensors' GGUF data bytes, the
    # formats used, and the tensors stored as F16 because their rows are not whole blocks.
    format_bytes: int | None = None
    formats: str | None = None
    format_fallbacks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def count_parameters(inventory: Inventory, facts: ArchFacts, plan: SlicePlan | None = None,
                     text_only: bool = False) -> ParamReport:
    """Counts for the base model (plan None) or for the checkpoint the plan would write."""
    plan = plan or SlicePlan.identity(facts)
    counts = dict.fromkeys(GROUPS, 0)
    total_bytes = text_bytes = 0
    dtypes: set[str] = set()
    for name, stored in inventory.items():
        spec = plan.tensor_spec(name, stored.shape, text_only=text_only)
        if spec is None:
            continue
        group = facts.family.group(name, facts.is_multimodal)
        counts[group] += spec.numel
        nbytes = spec.numel * SAFETENSORS_SIZES[stored.dtype]
        total_bytes += nbytes
        if group in ("embeddings", "ple", "text_other"):
            text_bytes += nbytes
        dtypes.add(stored.dtype)
    text = counts["embeddings"] + counts["ple"] + counts["text_other"]
    cost = format_cost(plan, inventory)
    return ParamReport(
        effective_params=counts["text_other"], ple_params=counts["ple"], embedding_params=counts["embeddings"],
        text_params=text, audio_params=counts["audio"], vision_params=counts["vision"],
        multimodal_embedder_params=counts["multimodal_embedders"], other_params=counts["other"],
        total_params=sum(counts.values()), total_bytes=total_bytes, text_bytes=text_bytes,
        dtype="/".join(sorted(dtypes)) or "none", format_bytes=cost.total_bytes if cost else None,
        formats=cost.formats if cost else None, format_fallbacks=cost.fallbacks if cost else ())
