"""Exact parameter accounting of a base model or of a slice of it.

"Effective parameters" follow Google's definition: language-model parameters excluding the
token embedding (`embed_tokens`) and the per-layer embedding table (`embed_tokens_per_layer`),
counting every tensor the checkpoint stores (k/v of KV-consumer layers included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from matlab.architecture import ArchFacts
from matlab.inventory import Inventory
from matlab.io.reader import DTYPE_SIZES
from matlab.plan import SlicePlan

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

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _group(name: str, text_prefix: str) -> str:
    if name.startswith(text_prefix) or name.startswith("lm_head."):
        relative = name[len(text_prefix):]
        if relative.startswith("embed_tokens_per_layer."):
            return "ple"
        if relative.startswith("embed_tokens."):
            return "embeddings"
        return "text_other"
    if name.startswith("model.audio_tower."):
        return "audio"
    if name.startswith("model.vision_tower."):
        return "vision"
    if name.startswith(("model.embed_vision.", "model.embed_audio.")):
        return "multimodal_embedders"
    return "other"


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
        group = _group(name, facts.text_prefix)
        counts[group] += spec.numel
        nbytes = spec.numel * DTYPE_SIZES[stored.dtype]
        total_bytes += nbytes
        if group in ("embeddings", "ple", "text_other"):
            text_bytes += nbytes
        dtypes.add(stored.dtype)
    text = counts["embeddings"] + counts["ple"] + counts["text_other"]
    return ParamReport(
        effective_params=counts["text_other"], ple_params=counts["ple"], embedding_params=counts["embeddings"],
        text_params=text, audio_params=counts["audio"], vision_params=counts["vision"],
        multimodal_embedder_params=counts["multimodal_embedders"], other_params=counts["other"],
        total_params=sum(counts.values()), total_bytes=total_bytes, text_bytes=text_bytes,
        dtype="/".join(sorted(dtypes)) or "none")
