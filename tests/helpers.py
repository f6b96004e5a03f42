"""Shared test helpers: tiny Gemma 3n configs, weight perturbation, the slice cases the
slicer and the elastic core are both checked on, a command killed mid-journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY_TEXT = dict(
    vocab_size=512, vocab_size_per_layer_input=384, hidden_size=64, intermediate_size=256, num_hidden_layers=15,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size_per_layer_input=8,
    num_kv_shared_layers=5, laurel_rank=4, sliding_window=8, max_position_embeddings=256,
    activation_sparsity_pattern=[0.95] * 5 + [0.0] * 10,
)


def tiny_text_config():
    from transformers import Gemma3nTextConfig

    return Gemma3nTextConfig(**TINY_TEXT)


def tiny_text_model(init_seed: int, perturb_seed: int):
    """A random tiny Gemma3nForCausalLM (init seeded), its weights shaken by `perturb`."""
    from transformers import Gemma3nForCausalLM

    torch.manual_seed(init_seed)
    model = Gemma3nForCausalLM(tiny_text_config())
    perturb(model, seed=perturb_seed)
    return model


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random init leaves norms at one and AltUp scales at zero; shake every weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def add_consumer_kv(directory: Path, prefix: str, config) -> None:
    """Store k/v of the KV-consumer layers as the released checkpoints do."""
    first_shared = config.num_hidden_layers - config.num_kv_shared_layers
    generator = torch.Generator().manual_seed(7)
    kv = config.num_key_value_heads * config.head_dim
    extra = {}
    for layer in range(first_shared, config.num_hidden_layers):
        base = f"{prefix}layers.{layer}.self_attn."
        extra[base + "k_proj.weight"] = torch.randn(kv, config.hidden_size, generator=generator)
        extra[base + "v_proj.weight"] = torch.randn(kv, config.hidden_size, generator=generator)
        extra[base + "k_norm.weight"] = torch.randn(config.head_dim, generator=generator)
    save_file(extra, directory / "model-consumer-kv.safetensors", metadata={"format": "pt"})
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"].update({name: "model-consumer-kv.safetensors" for name in extra})
    index["metadata"]["total_size"] += sum(t.numel() * t.element_size() for t in extra.values())
    index_path.write_text(json.dumps(index))


def write_tokenizer_files(directory: Path) -> None:
    """A byte-level tokenizer (ids 4..259 are bytes) in Hugging Face format, plus extras."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(specials + sorted(byte_chars))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
    fast.save_pretrained(directory)
    (directory / "chat_template.jinja").write_text("{{ messages }}")
    (directory / "processor_config.json").write_text(json.dumps({"processor_class": "Gemma3nProcessor"}))


# Tiny model: 15 layers, FFN 256, producers 8 (sliding) and 9 (full), consumers 10..14, sparse 0..4.
SLICE_CASES = {
    "ffn-only": ([], [128] * 15),
    "skip-in-kv-shared": ([10, 11, 12], [128] * 12),
    "skip-before-kv-shared": ([2, 5, 6], [256, 128] * 6),
    "skip-in-sparse-and-shared": ([0, 3, 13], [96] * 12),
    "odd-widths": ([4], [96, 256, 128, 64, 200, 256, 96, 32, 256, 1, 96, 128, 256, 160]),
}


def kill_when_journal_has(command: list[str], journal: Path, lines: int, seconds: float) -> int:
    """Start `command`, SIGKILL it once `journal` holds `lines` lines (or after `seconds`), and
    return how many lines it holds then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < lines):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return len(journal.read_text().splitlines())
