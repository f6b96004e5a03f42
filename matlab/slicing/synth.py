"""Random checkpoints with a real architecture's tensor names, shapes and dtype.

No real Gemma 3n weights are reachable from our build machines; these stand in for them in
benchmarks (full-size E4B: 15.7 GB in bf16) and tests. Values are random and written in
chunks, so the generator needs little memory whatever the checkpoint size.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from matlab.arch.facts import ArchFacts
from matlab.arch.inventory import inventory_from_facts
from matlab.io.staging import staged_output
from matlab.io.writer import OutputTensor, ShardedWriter
from matlab.progress import NO_PROGRESS, Progress
from matlab.util.dtypes import torch_dtype

SYNTH_CHUNK_ELEMENTS = 16 * 2**20


def synthesize_checkpoint(facts: ArchFacts, out: str | Path, *, text_only: bool = False, seed: int = 0,
                          max_shard_bytes: int = 5 * 10**9, force: bool = False, like: Path | None = None,
                          progress: Progress = NO_PROGRESS) -> Path:
    """Write a random checkpoint of architecture `facts` to `out` (atomically); `like` is the
    checkpoint the architecture was read from, which `out` may not overlap."""
    out = Path(out)
    inventory = inventory_from_facts(facts, text_only=text_only)
    tensors: list[OutputTensor] = []
    for name in sorted(inventory):
        stored = inventory[name]
        target = facts.family.text_only_name(name, facts.is_multimodal) if text_only else name
        if target is not None:
            tensors.append(OutputTensor(target, stored.dtype, stored.shape))
    config = facts.family.text_only_config(facts.config) if text_only else facts.config
    generator = torch.Generator().manual_seed(seed)
    with staged_output(out, force, inputs=(like,)) as temporary:
        with ShardedWriter(temporary, tensors, max_shard_bytes) as writer:
            progress.start(writer.total_size, description="writing")
            for tensor in tensors:
                writer.begin(tensor.name)
                dtype = torch_dtype(tensor.dtype)
                if not dtype.is_floating_point:  # integer buffers such as BN step counters
                    writer.write(bytes(tensor.nbytes))
                    continue
                remaining = tensor.nbytes // dtype.itemsize
                while remaining:
                    count = min(remaining, SYNTH_CHUNK_ELEMENTS)
                    values = torch.randn(count, generator=generator).mul_(0.02).to(dtype)
                    data = values.view(torch.uint8).numpy().data
                    writer.write(data)
                    progress.advance(len(data))
                    remaining -= count
            writer.close()
        (temporary / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
