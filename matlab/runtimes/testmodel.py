"""A tiny random Gemma 3n text model with E4B's layer structure, that real runtimes can load.

llama.cpp's Gemma 3n loader reads neither the per-layer-embedding width, the laurel rank nor
the AltUp input count from the GGUF (fixed at 256, 64 and 4: src/llama-hparams.h), and it
hard-codes 20 layers before the KV-shared region (src/models/gemma3n.cpp) and 10 sparse layers
at sparsity 0.95 (src/models/models.h). So the test model keeps all of E4B's
structure (35 layers, 15 KV-shared, 4 sliding + 1 full, those three widths) and shrinks the
rest (hidden 64, FFN 256, 4 query and 2 KV heads of 32, vocab 512): about 35 MB in float32,
written in well under a second.

Random weights make an ill-conditioned model: runtimes that differ only in rounding (or, as
llama.cpp does, in dividing the sparsity std by n-1 instead of n) then differ by whole logits.
The norms that end the attention, laurel and FFN branches before they join the residual stream
are scaled down (`POST_BRANCH_NORMS`), which keeps those differences at the size of the cause.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import torch

from matlab.families import GEMMA3N
from matlab.io.staging import staged_output

_ATTENTION_PERIOD = ["sliding_attention"] * 4 + ["full_attention"]
_LAYERS = 35
_SPARSE_LAYERS = 10

# Gemma3nTextConfig's defaults are E4B; the structure is stated here all the same, so that a
# change of transformers' defaults cannot change what llama.cpp is tested on.
RUNTIME_TEST_CONFIG = dict(
    num_hidden_layers=_LAYERS, num_kv_shared_layers=15, layer_types=_ATTENTION_PERIOD * (_LAYERS // 5),
    activation_sparsity_pattern=[0.95] * _SPARSE_LAYERS + [0.0] * (_LAYERS - _SPARSE_LAYERS),
    hidden_size_per_layer_input=256, laurel_rank=64, altup_num_inputs=4,
    # llama.cpp's converter pads `embed_tokens_per_layer` with zero rows up to `vocab_size`
    # (conversion/gemma.py, Gemma3NModel.modify_tensors) where transformers maps ids past
    # `vocab_size_per_layer_input` to row 0; equal sizes keep the two runtimes on one model.
    vocab_size=512, vocab_size_per_layer_input=512,
    # head_dim 32: the smallest vLLM's CPU attention takes (CPUAttentionBackend.get_supported_head_sizes).
    hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    sliding_window=16, max_position_embeddings=512,
)

# Each branch's last norm before the residual add: attention, laurel and FFN. The per-layer-input
# branch's norm is left at one: scaling it barely changes the sparsity difference (0.0023 at one,
# 0.0027 at 0.1) but shrinks what a runtime that drops the per-layer embeddings gets wrong from
# 2.1 to 0.49, inside the quantized types' tolerances.
POST_BRANCH_NORMS = ("post_attention_layernorm", "laurel.post_laurel_norm", "post_feedforward_layernorm")
POST_BRANCH_SCALE = 0.1
SHAKE_STD = 0.05  # as the tests' `perturb`: norms at one and AltUp scales at zero would test nothing
# transformers initialises AltUp's output scale to zeros, and the per-layer-input gate reads the
# scaled stream: at ~0 the per-layer embeddings add next to nothing, and a runtime that drops
# them (vLLM's text-only class) would pass. Trained checkpoints carry scales near one.
ALTUP_SCALE = "altup.correct_output_scale"
ALTUP_SCALE_RANGE = (0.5, 1.5)

# Gemma's special pieces and ids; `<mask>` is Gemma's id 4 and GemmaTokenizer expects it.
SPECIAL_PIECES = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
SPECIAL_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
MASK_PIECE = "<mask>"

_SYLLABLES = ("ka", "ri", "to", "mu", "sen", "lo", "va", "pe", "dor", "in", "qua", "zi", "bel", "on", "tra", "mi",
              "shu", "ex", "ne", "ol", "gar", "fi", "um", "pla")
_WORDS = ("the", "a", "of", "and", "to", "in", "is", "that", "it", "for", "was", "on", "with", "as", "layer",
          "model", "width", "token", "café", "naïve", "Straße", "déjà", "über", "niño")


def tokenizer_corpus(lines: int = 3000) -> list[str]:
    """Sentences of made-up and common words, numbers and punctuation; the same on every call."""
    rng = random.Random(0)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(400)] + list(_WORDS)
    corpus = []
    for _ in range(lines):
        sentence = [rng.choice(words) for _ in range(rng.randint(3, 14))]
        if rng.random() < 0.3:
            sentence[0] = sentence[0].capitalize()
        if rng.random() < 0.3:
            sentence.insert(rng.randrange(len(sentence)), str(rng.randint(0, 99_999)))
        corpus.append(" ".join(sentence) + rng.choice((".", "!", "?", ",", ";", "")))
    return corpus


def train_sentencepiece(vocab_size: int) -> bytes:
    """A byte-fallback BPE SentencePiece model of `vocab_size` pieces, trained as Gemma's is
    set up: no dummy prefix, no normalization, whitespace kept, digits split."""
    import sentencepiece

    model = io.BytesIO()
    pieces = {f"{kind}_piece": piece for kind, piece in SPECIAL_PIECES.items()}
    ids = {f"{kind}_id": index for kind, index in SPECIAL_IDS.items()}
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(tokenizer_corpus()), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, control_symbols=[MASK_PIECE], **pieces, **ids, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0, num_threads=1, minloglevel=2)
    return model.getvalue()


def _well_conditioned(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * SHAKE_STD)
            if name.removesuffix(".weight").endswith(POST_BRANCH_NORMS):
                parameter.mul_(POST_BRANCH_SCALE)
            elif name.endswith(ALTUP_SCALE):
                low, high = ALTUP_SCALE_RANGE
                parameter.copy_(torch.empty(parameter.shape).uniform_(low, high, generator=generator))


def _consumer_kv(config, seed: int) -> dict[str, torch.Tensor]:
    """k/v projections and k norms of the KV-consumer layers, which transformers 5 neither
    allocates nor saves; the released checkpoints store them, and llama.cpp's loader requires
    them in every layer (src/models/gemma3n.cpp). Neither runtime reads their values."""
    consumers = [layer for layer, mode in enumerate(config.kv_sharing_modes) if mode == "reuse"]
    shapes = GEMMA3N.stored_unallocated(config.to_dict(), "model.", consumers)
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) * 0.02 + (1.0 if len(shape) == 1 else 0.0)
            for name, shape in shapes.items()}


def _write_tokenizer(directory: Path, vocab_size: int) -> None:
    from transformers import GemmaTokenizer

    (directory / "tokenizer.model").write_bytes(train_sentencepiece(vocab_size))
    tokenizer = GemmaTokenizer.from_pretrained(directory, add_bos_token=True, add_eos_token=False)
    for key in ("vocab_file", "is_local", "local_files_only"):  # the staging folder's path, not the output's
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(directory)


def write_runtime_test_model(out: Path, *, seed: int = 0, force: bool = False, hidden: int = 64) -> Path:
    """Write a random float32 `Gemma3nForCausalLM` checkpoint with E4B's layer structure and
    tiny widths, with a SentencePiece tokenizer, to `out` (atomically; the same files for the
    same `seed`). `hidden` 256 makes every weight llama-quantize quantizes whole K-quant
    super-blocks (FFN 1024, heads of 64; about 130 MB).

    Returns:
        `out`.
    """
    from safetensors.torch import load_file, save_file
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig
    from transformers.utils import logging as transformers_logging

    out = Path(out)
    config = Gemma3nTextConfig(**{**RUNTIME_TEST_CONFIG, "hidden_size": hidden, "intermediate_size": 4 * hidden,
                                  "head_dim": hidden // 2})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3nForCausalLM(config).float()
    _well_conditioned(model, seed + 1)
    with staged_output(out, force) as temporary:
        bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # a library call prints nothing
        try:
            model.save_pretrained(temporary)
        finally:
            if bars:
                transformers_logging.enable_progress_bar()
        weights = temporary / "model.safetensors"
        tensors = load_file(weights)
        tensors.update(_consumer_kv(config, seed + 2))
        save_file(dict(sorted(tensors.items())), weights, metadata={"format": "pt"})
        _write_tokenizer(temporary, config.vocab_size)
    return out


__all__ = ["RUNTIME_TEST_CONFIG", "write_runtime_test_model", "train_sentencepiece", "tokenizer_corpus"]
