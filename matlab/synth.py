"""Random checkpoints with a real architecture's tensor names, shapes and dtype.

No real Gemma 3n weights are reachable from our build machines; these stand in for them in
benchmarks (full-size E4B: 15.7 GB in bf16) and tests. Values are random and written in
chunks, so the generator needs little memory whatever the checkpoint size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from matlab.architecture import ArchFacts
from matlab.inventory import inventory_from_facts
from matlab.io.staging import staged_output
from matlab.io.writer import OutputTensor, ShardedWriter

SAFETENSORS_TO_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SYNTH_CHUNK_ELEMENTS = 16 * 2**20


def _text_only_name(name: str, facts: ArchFacts) -> str | None:
    if name.startswith(facts.text_prefix):
        return "model." + name[len(facts.text_prefix):]
    return None


def synthesize_checkpoint(facts: ArchFacts, out: str | Path, *, text_only: bool = False, seed: int = 0,
                          max_shard_bytes: int = 5 * 10**9, force: bool = False,
                          on_start: Callable[[int], None] | None = None,
                          progress: Callable[[int], None] | None = None) -> Path:
    """Write a random checkpoint of architecture `facts` to `out` (atomically)."""
    out = Path(out)
    inventory = inventory_from_facts(facts)
    tensors: list[tuple[str, OutputTensor]] = []
    for name in sorted(inventory):
        stored = inventory[name]
        target = _text_only_name(name, facts) if text_only and facts.is_multimodal else name
        if target is not None:
            tensors.append((name, OutputTensor(target, stored.dtype, stored.shape)))
    config = facts.config
    if text_only and facts.is_multimodal:
        config = {**facts.config["text_config"], "model_type": "gemma3n_text",
                  "architectures": ["Gemma3nForCausalLM"], "dtype": facts.dtype}
    generator = torch.Generator().manual_seed(seed)
    with staged_output(out, force) as temporary:
        with ShardedWriter(temporary, [tensor for _, tensor in tensors], max_shard_bytes) as writer:
            if on_start:
                on_start(writer.total_size)
            for _, tensor in tensors:
                writer.begin(tensor.name)
                if tensor.dtype not in SAFETENSORS_TO_TORCH:  # integer buffers such as BN step counters
                    writer.write(bytes(tensor.nbytes))
                    continue
                torch_dtype = SAFETENSORS_TO_TORCH[tensor.dtype]
                remaining = tensor.nbytes // torch_dtype.itemsize
                while remaining:
                    count = min(remaining, SYNTH_CHUNK_ELEMENTS)
                    values = torch.randn(count, generator=generator).mul_(0.02).to(torch_dtype)
                    data = values.view(torch.uint8).numpy().data
                    writer.write(data)
                    if progress:
                        progress(len(data))
                    remaining -= count
            writer.close()
        (temporary / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
