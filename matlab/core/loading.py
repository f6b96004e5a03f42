"""Load the language model of a Gemma 3n checkpoint (either layout) for text inference.

Only text tensors are read ("conditional parameter loading"): the model is built on the meta
device, the text tensors are read shard by shard and assigned, and the non-persistent buffers
(RoPE frequencies, embedding scales) are initialized by transformers' own `_init_weights`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

from matlab.architecture import ArchFacts, TEXT_ONLY_PREFIX, facts_from_checkpoint, facts_from_config
from matlab.errors import CheckpointError
from matlab.io.reader import CheckpointFiles, TensorInfo
from matlab.resolve import resolve_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A text model ready to run, with the facts of its (text-layout) architecture."""

    model: Gemma3nForCausalLM
    facts: ArchFacts
    directory: Path
    tokenizer: object | None
    device: torch.device
    dtype: torch.dtype


def text_facts(facts: ArchFacts) -> ArchFacts:
    """The facts of the text model alone, in the `gemma3n_text` layout (`model.*` names)."""
    if not facts.is_multimodal:
        return facts
    config = {**facts.config["text_config"], "model_type": "gemma3n_text", "architectures": ["Gemma3nForCausalLM"]}
    return facts_from_config(config, facts.name)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def empty_model(facts: ArchFacts, dtype: torch.dtype) -> Gemma3nForCausalLM:
    """A model whose parameters are on the meta device and whose buffers are real (CPU)."""
    config = Gemma3nTextConfig.from_dict({k: v for k, v in facts.text_config.items() if k != "model_type"})
    with _default_dtype(dtype), torch.device("meta"):
        model = Gemma3nForCausalLM(config)
    for module in model.modules():
        if not module._buffers:
            continue
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.empty_like(buffer, device="cpu")
        # Called on the inner text model: its `_init_weights` reads `self.hidden_size`.
        model.model._init_weights(module)  # fills buffers; on meta parameters it is a no-op
    model.config._attn_implementation = "sdpa"
    return model


class CpuResidentEmbedding(torch.nn.Module):
    """Per-layer embedding lookup on the CPU, results moved to the model's device per batch."""

    def __init__(self, embedding: torch.nn.Module, device: torch.device):
        super().__init__()
        self.embedding = embedding
        self.device = device

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids.to("cpu")).to(self.device, non_blocking=True)


def _read_text_tensors(files: CheckpointFiles, facts: ArchFacts, wanted: set[str],
                       dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Text tensors by their `gemma3n_text` names. On the CPU, safetensors returns tensors
    backed by the file's memory map when no dtype conversion is needed."""
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, TensorInfo]]] = {}
    for name, info in files.tensors.items():
        if not (name.startswith(facts.text_prefix) or name.startswith("lm_head.")):
            continue  # audio and vision tensors are never read
        target = name if name.startswith("lm_head.") else TEXT_ONLY_PREFIX + name[len(facts.text_prefix):]
        if target in wanted:
            by_file.setdefault(info.file, []).append((target, info))
    for path, entries in by_file.items():  # one shard open at a time
        with safe_open(path, framework="pt") as handle:
            for target, info in entries:
                state[target] = handle.get_tensor(info.name).to(dtype)
    return state


def load_model(checkpoint: str | Path, device: str = "cpu", dtype: str | torch.dtype = "float32",
               ple_on_cpu: bool = False) -> LoadedModel:
    """Load the language model of a checkpoint for text inference.

    Args:
        ple_on_cpu: keep `embed_tokens_per_layer` on the CPU (memory-mapped from the file when
            the dtype matches it) with the lookup done per batch, while the rest runs on `device`.
    """
    directory = resolve_checkpoint(checkpoint)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    facts = facts_from_checkpoint(directory)
    files = CheckpointFiles(directory)
    model = empty_model(text_facts(facts), torch_dtype)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    wanted = set(model.state_dict()) - tied
    state = _read_text_tensors(files, facts, wanted, torch_dtype)
    missing = sorted(wanted - set(state))
    if missing:
        raise CheckpointError(f"{directory}: missing text tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    target = torch.device(device)
    if ple_on_cpu and target.type != "cpu":
        ple = model.model.embed_tokens_per_layer
        model.model.embed_tokens_per_layer = None
        model.to(target)
        model.model.embed_tokens_per_layer = CpuResidentEmbedding(ple, target)
    else:
        model.to(target)
    model.eval()
    return LoadedModel(model, text_facts(facts), directory, load_tokenizer(directory), target, torch_dtype)


def load_tokenizer(directory: Path):
    """The checkpoint's own tokenizer, or None if it ships none (never a hub lookup)."""
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
