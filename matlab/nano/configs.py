"""The nano analogues of Google's official Mix-n-Match configs, written as slice config YAML."""

from __future__ import annotations

from matlab.nano.model import FFN, KV_SHARED, LAYERS, PATTERN, nested_e2b
from matlab.slice_config import SliceConfig

FIRST_SHARED = LAYERS - KV_SHARED
FIRST_SHARED_BLOCK = tuple(range(FIRST_SHARED, FIRST_SHARED + PATTERN))
FULL_ATTENTION = tuple(range(PATTERN - 1, LAYERS, PATTERN))


def _widths(wide: set[int], skipped: tuple[int, ...] = (), ffn: int = FFN) -> tuple[int, ...]:
    return tuple(ffn if layer in wide else ffn // 2 for layer in range(LAYERS) if layer not in skipped)


def _name(stem: str) -> str:
    """'nano-l3' -> 'nano-L3'."""
    return "nano-" + stem.removeprefix("nano-").upper()


def nano_configs(ffn: int = FFN) -> dict[str, SliceConfig]:
    """File stem -> config. Layer-level configs widen the full-attention layers first;
    block-level ones widen one contiguous block; the last few skip layers before the
    KV-shared region."""
    configs = {"nano-e4b": SliceConfig(name="nano-E4B", description="The full nano model.", ffn_widths=ffn),
               "nano-e2b": nested_e2b(ffn)}
    layer_level = [
        ("nano-l1", "widen layer 4 of nano-E2B", {FULL_ATTENTION[0]}, FIRST_SHARED_BLOCK),
        ("nano-l2", "layer 4 and the first KV-shared block wide", {FULL_ATTENTION[0], *FIRST_SHARED_BLOCK}, ()),
        ("nano-l3", "full-attention layers 4, 9 and the first KV-shared block wide",
         {*FULL_ATTENTION[:2], *FIRST_SHARED_BLOCK}, ()),
        ("nano-l4", "every full-attention layer and the first KV-shared block wide",
         {*FULL_ATTENTION, *FIRST_SHARED_BLOCK}, ()),
        ("nano-l5", "every full-attention layer and layers 5..14 wide",
         {*FULL_ATTENTION, *range(PATTERN, FIRST_SHARED + PATTERN)}, ()),
        ("nano-l6", "all wide but the first block's sliding layers",
         set(range(LAYERS)) - set(range(PATTERN - 1)), ()),
    ]
    for stem, description, wide, skipped in layer_level:
        configs[stem] = SliceConfig(name=_name(stem),
                                    description=f"Layer-level: {description}.", layers_skipped=skipped,
                                    ffn_widths=_widths(wide, skipped, ffn))
    block_level = [("nano-b1", range(10, 15)), ("nano-b2", range(5, 15)), ("nano-b3", range(5, 20)),
                   ("nano-b4", range(0, 15)), ("nano-b5", range(10, 20))]
    for stem, block in block_level:
        configs[stem] = SliceConfig(name=_name(stem),
                                    description=f"Block-level: layers {block.start}..{block.stop - 1} wide.",
                                    ffn_widths=_widths(set(block), ffn=ffn))
    skips = [("nano-s1", (5, 6, 7)), ("nano-s2", (1, 2, 3)), ("nano-s3", (2, 3, 6, 7))]
    for stem, skipped in skips:
        configs[stem] = SliceConfig(name=_name(stem),
                                    description=f"Skip layers {list(skipped)} before the KV-shared region, "
                                                "full widths elsewhere.",
                                    layers_skipped=skipped, ffn_widths=ffn)
    return configs
