"""The nano Gemma 3n architecture and its MatFormer granularities.

Structure mirrors E4B at small scale: the 4 sliding : 1 full attention pattern, KV sharing
over the last two blocks with producers just before them, Gaussian top-k sparsity in the
first block, AltUp, LAuReL and per-layer embeddings. nano-E2B mirrors E2B: it skips the first
block of the KV-shared region and halves every FFN.
"""

from __future__ import annotations

import random

from transformers import Gemma3nTextConfig

from matlab.arch.facts import ArchFacts, facts_from_config
from matlab.families import GEMMA3N
from matlab.slice_config import SliceConfig

PATTERN = 5  # 4 sliding + 1 full
LAYERS = 20
KV_SHARED = 10
FFN = 512


def nano_config(vocab_size: int, ffn: int = FFN) -> Gemma3nTextConfig:
    padded = -(-vocab_size // 64) * 64
    return Gemma3nTextConfig(
        vocab_size=padded, vocab_size_per_layer_input=padded, hidden_size=128, intermediate_size=ffn,
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        hidden_size_per_layer_input=16, num_kv_shared_layers=KV_SHARED, laurel_rank=8, sliding_window=32,
        max_position_embeddings=512, activation_sparsity_pattern=[0.95] * PATTERN + [0.0] * (LAYERS - PATTERN),
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)


def nano_facts(config: Gemma3nTextConfig) -> ArchFacts:
    """Architecture facts of a nano model's config (the text-only layout)."""
    return facts_from_config({**config.to_dict(), "model_type": GEMMA3N.text_model_type}, "nano")


def nested_e2b(ffn: int = FFN) -> SliceConfig:
    first_shared = LAYERS - KV_SHARED
    return SliceConfig(name="nano-E2B", description="Skip the first KV-shared block, halve every FFN.",
                       layers_skipped=tuple(range(first_shared, first_shared + PATTERN)), ffn_widths=ffn // 2)


def random_mix_n_match(generator: random.Random, ffn: int = FFN) -> SliceConfig:
    """A random Mix-n-Match submodel: per-layer widths from {FFN/2, FFN}, the first shared
    block skipped half of the time."""
    first_shared = LAYERS - KV_SHARED
    skipped = tuple(range(first_shared, first_shared + PATTERN)) if generator.random() < 0.5 else ()
    share_full = generator.random()
    widths = tuple(ffn if generator.random() < share_full else ffn // 2 for _ in range(LAYERS - len(skipped)))
    return SliceConfig(name="mix", layers_skipped=skipped, ffn_widths=widths)
