"""GGUF export with llama.cpp's own conversion code.

The converter (`convert_hf_to_gguf.py` of the llama.cpp tree llama-cpp-python vendors) already
knows Gemma 3n's GGUF layout: tensor names, the per-layer `sliding_window_pattern` it writes
from `layer_types`, the shared-KV count, the sparsity scales and the tokenizer. Re-deriving that
would drift from the loader it must match, so we run it, in the llama.cpp environment, as a
child process. Types it cannot write itself (the K-quants) are made from its f32 output with
llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from matlab.conformance.envs import RUNNERS, interpreter, llama_cpp_tree
from matlab.errors import InputError, MatformerError, OutputExistsError
from matlab.io.staging import check_apart

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZER_TYPES = ("q4_0", "q4_k_m", "q5_k_m", "q6_k")
GGUF_TYPES = CONVERTER_TYPES + QUANTIZER_TYPES
GGUF_MAGIC = b"GGUF"


class ConversionError(MatformerError):
    """llama.cpp's converter or quantizer refused the checkpoint (its own message inside)."""


def check_gguf_type(weight_type: str) -> str:
    if weight_type not in GGUF_TYPES:
        raise InputError(f"--type {weight_type}: unknown GGUF weight type; choose one of {', '.join(GGUF_TYPES)}")
    return weight_type


def convert_to_gguf(checkpoint: Path, out: Path, weight_type: str, timeout: float = 3600) -> Path:
    """Write `checkpoint` (a Hugging Face directory) as GGUF file `out` of `weight_type`."""
    check_gguf_type(weight_type)
    python, tree = interpreter("llama.cpp"), llama_cpp_tree()
    first = out if weight_type in CONVERTER_TYPES else out.with_name(out.name + ".f32")
    _child([str(python), str(tree / "convert_hf_to_gguf.py"), str(checkpoint),
            "--outtype", weight_type if weight_type in CONVERTER_TYPES else "f32", "--outfile", str(first)],
           "llama.cpp's converter", timeout)
    if first != out:
        try:
            _child([str(python), str(RUNNERS / "llamacpp_quantize.py"), str(first), str(out), weight_type],
                   "llama.cpp's quantizer", timeout)
        finally:
            first.unlink(missing_ok=True)
    return out


def export_gguf(checkpoint: Path, out: Path, weight_type: str, force: bool = False) -> Path:
    """`convert_to_gguf` as a user's export: `out` appears whole or not at all, never inside the
    checkpoint, and replaces only a GGUF file (with `force`)."""
    check_gguf_type(weight_type)
    if not (checkpoint / "config.json").is_file():
        raise InputError(f"{checkpoint}: no config.json; pass a directory written by `matformer slice`")
    check_apart(out, (checkpoint,))
    if out.exists():
        if out.is_dir() or not _is_gguf(out):
            raise OutputExistsError(f"--out {out}: exists and is not a GGUF file; choose another path")
        if not force:
            raise OutputExistsError(f"--out {out}: exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        convert_to_gguf(checkpoint, partial, weight_type)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == GGUF_MAGIC


def _child(command: list[str], what: str, timeout: float) -> None:
    """Run one llama.cpp tool; its failure is one line with the tool's own last error line."""
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise ConversionError(f"{what} did not finish within {timeout:.0f} s") from error
    if finished.returncode:
        raise ConversionError(f"{what} refused {command[2]}: {last_error_line(finished.stderr)}")


def last_error_line(stderr: str) -> str:
    """The line of a tool's stderr that says what went wrong (its last error, else its last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("Error", "error", "ASSERT", "assert", "failed", "Exception")):
            return line[:500]
    return lines[-1][:500] if lines else "no message"
