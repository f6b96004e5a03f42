"""A baseline slicer written the way Google's MatFormer Lab notebook does it: load each whole
tensor, slice it, accumulate a shard dict, and re-sum the dict's size after every tensor.

Kept only as the benchmark's reference point; `matlab.slicing.slicer` is the real slicer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from matlab.arch.facts import facts_from_checkpoint
from matlab.io.reader import INDEX_NAME, CheckpointFiles
from matlab.plan import SlicePlan
from matlab.slice_config import SliceConfig


def _cut(tensor: torch.Tensor, rows, cols) -> torch.Tensor:
    if rows is not None:
        tensor = torch.cat([tensor[a:b] for a, b in rows])
    if cols is not None:
        tensor = torch.cat([tensor[:, a:b] for a, b in cols], dim=1)
    return tensor.contiguous()


def naive_slice(source: Path, config: SliceConfig, out: Path, text_only: bool = False,
                max_shard_bytes: int = 5 * 10**9) -> int:
    """Slice like the notebook; returns the bytes of whole tensors it loaded."""
    plan = SlicePlan.build(config, facts_from_checkpoint(source))
    out.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    shards: list[dict[str, torch.Tensor]] = []
    loaded = 0
    names: list[list[str]] = []

    def flush() -> None:
        index = len(names)
        save_file(shard, out / f"naive-{index:05d}.safetensors", metadata={"format": "pt"})
        names.append(list(shard))
        shard.clear()

    files = CheckpointFiles(source)
    for path in files.files:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                spec = plan.tensor_spec(name, tuple(handle.get_slice(name).get_shape()), text_only=text_only)
                if spec is None:
                    continue
                whole = handle.get_tensor(name)  # the whole tensor, even to keep part of it
                loaded += whole.numel() * whole.element_size()
                shard[spec.target] = _cut(whole, spec.rows, spec.cols)
                del whole
                size = sum(t.numel() * t.element_size() for t in shard.values())  # re-summed every time
                if size > max_shard_bytes:
                    flush()
    if shard:
        flush()
    del shards
    weight_map = {name: f"naive-{i:05d}.safetensors" for i, group in enumerate(names) for name in group}
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(plan.sliced_config(text_only)))
    return loaded
