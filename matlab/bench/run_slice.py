"""One side of `matformer bench slice`, run in its own process (`python -m matlab.bench.run_slice`).

Prints one JSON line: the bytes the method read and wrote.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from matlab.slice_config import load_slice_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("method", choices=("ours", "naive", "copy"))
    parser.add_argument("source", type=Path)
    parser.add_argument("config")
    parser.add_argument("out", type=Path)
    parser.add_argument("--text-only", action="store_true")
    args = parser.parse_args(argv)
    if args.method == "ours":
        from matlab.slicing.slicer import slice_checkpoint

        result = slice_checkpoint(args.source, load_slice_config(args.config), args.out, text_only=args.text_only)
        moved = {"read": result.bytes_read, "written": result.bytes_written}
    elif args.method == "naive":
        from matlab.bench.naive_slicer import naive_slice

        loaded = naive_slice(args.source, load_slice_config(args.config), args.out, text_only=args.text_only)
        moved = {"read": loaded, "written": sum(path.stat().st_size for path in args.out.glob("*.safetensors"))}
    else:  # the copy floor: copy the weight files of an already sliced output
        args.out.mkdir()
        total = 0
        for path in sorted(args.source.glob("*.safetensors")):
            shutil.copyfile(path, args.out / path.name)
            total += path.stat().st_size
        moved = {"read": total, "written": total}
    print(json.dumps(moved))


if __name__ == "__main__":
    main()
