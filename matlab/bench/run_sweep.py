"""One side of `matformer bench sweep`, run in its own process (`python -m matlab.bench.run_sweep`).

Prints one JSON line: the sweep's seconds, timed after the imports both modes share.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("suite", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("configs", type=Path, nargs="+")
    parser.add_argument("--materialize", action="store_true")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)

    import lm_eval.evaluator  # noqa: F401  (imported before the clock starts, by both modes alike)

    from matlab.distributed.pool import PoolSettings
    from matlab.harness.suite import load_suite
    from matlab.harness.sweep import SweepSettings, run_sweep

    settings = SweepSettings(load_suite(args.suite), limit=args.limit, materialize=args.materialize)
    started = time.perf_counter()
    run_sweep(args.checkpoint, args.configs, args.run_dir, settings,
              pool=PoolSettings(args.workers) if args.workers else None)
    print(json.dumps({"seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
