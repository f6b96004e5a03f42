"""One side of `matformer bench switch`, run in its own process (`python -m matlab.bench.run_switch`).

`elastic`: load the full model, warm it with one forward pass, build the submodel `--builds`
times, then run its first forward pass. `materialize`: slice the config to disk (text-only),
load the slice, run its first forward pass. Prints one JSON line of seconds; saves the
submodel's logits on a fixed input to `WORK/logits-MODE.pt` for the comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from matlab.core.loading import load_model
from matlab.core.submodel import select_submodel
from matlab.slice_config import load_slice_config
from matlab.slicing.slicer import slice_checkpoint


def _forward_seconds(model, work: Path | None, mode: str) -> float:
    ids = torch.tensor([[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000]]) % model.config.vocab_size
    started = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    seconds = time.perf_counter() - started
    if work is not None:
        torch.save(logits, work / f"logits-{mode}.pt")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("elastic", "materialize"))
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("config")
    parser.add_argument("work", type=Path)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--builds", type=int, default=5)
    args = parser.parse_args(argv)
    config = load_slice_config(args.config)
    numbers: dict = {}
    if args.mode == "elastic":
        started = time.perf_counter()
        loaded = load_model(args.checkpoint, dtype=args.dtype)
        numbers["load_full_seconds"] = time.perf_counter() - started
        # Loading maps the files lazily; a forward pass of the full model pages its weights in,
        # as the first config of a sweep would. Switching is measured from that warm state.
        numbers["full_model_warmup_seconds"] = _forward_seconds(loaded.model, None, args.mode)
        timings = []
        for _ in range(args.builds):
            started = time.perf_counter()
            submodel = select_submodel(loaded, config, args.config)
            timings.append(time.perf_counter() - started)
        numbers["build_seconds_each"] = timings
        numbers["first_forward_seconds"] = _forward_seconds(submodel.model, args.work, args.mode)
    else:
        target = args.work / "sliced"
        started = time.perf_counter()
        slice_checkpoint(args.checkpoint, config, target, config_source=args.config, text_only=True, force=True)
        numbers["slice_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_model(target, dtype=args.dtype)
        numbers["load_slice_seconds"] = time.perf_counter() - started
        numbers["first_forward_seconds"] = _forward_seconds(loaded.model, args.work, args.mode)
    print(json.dumps(numbers))


if __name__ == "__main__":
    main()
