"""GGUF export with llama.cpp's own conversion code.

The converter (`convert_hf_to_gguf.py` of the llama.cpp tree llama-cpp-python vendors) already
knows Gemma 3n's GGUF layout: tensor names, the per-layer `sliding_window_pattern` it writes
from `layer_types`, the shared-KV count, the sparsity scales and the tokenizer. Re-deriving that
would drift from the loader it must match, so we run it, in the llama.cpp environment, as a
child process. Types it cannot write itself (the K-quants) are made from its f32 output with
llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python).

`--type per-tensor` writes each tensor in the type the slice's own `weight_formats` give it (the
config recorded in its provenance): the converter runs with its per-tensor type hook answering
from those formats (`runners/llamacpp_convert.py`), so names, stacking, padding and metadata
stay the converter's, and the tensors are quantized by its gguf-py's reference quantizers, the
ones `matformer search --formats` measures quality with. The written file is read back and its
bytes per type must equal what `matlab.plan.tensor_formats` counted for the slice (what the search
budgets), or the export fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import inventory_from_checkpoint
from matlab.errors import InputError, MatformerError, OutputExistsError
from matlab.formats.tensors import TensorFormat
from matlab.formats.types import PRESET_NAMES
from matlab.io.staging import PROVENANCE_NAME, check_apart
from matlab.plan import SlicePlan
from matlab.plan.tensor_formats import SOURCE_TYPES, tensor_formats, uses_llama_quantize
from matlab.runtimes.base import RUNNERS
from matlab.runtimes.envs import env_directory, interpreter
from matlab.runtimes.llama_cpp import source_tree
from matlab.slice_config import SliceConfig
from matlab.slice_config.weight_formats import WeightFormats

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
# llama.cpp's file types made by its quantizer from the converter's file at the checkpoint's own
# type (`--type q8_0` is the converter's own Q8_0, which quantizes every 2-D tensor).
QUANTIZER_TYPES = tuple(preset for preset in PRESET_NAMES if preset not in CONVERTER_TYPES) + ("q4_0",)
PER_TENSOR = "per-tensor"  # a type per tensor: the slice's recorded weight_formats
GGUF_TYPES = CONVERTER_TYPES + QUANTIZER_TYPES + (PER_TENSOR,)
RENAMED_TYPES = {"formats": PER_TENSOR}  # its name before 0.2, still read
GGUF_MAGIC = b"GGUF"


class ConversionError(MatformerError):
    """llama.cpp's converter or quantizer refused the checkpoint (its own message inside)."""


def check_gguf_type(weight_type: str) -> str:
    """The weight type `weight_type` names (its current name), or InputError listing them."""
    weight_type = RENAMED_TYPES.get(weight_type, weight_type)
    if weight_type not in GGUF_TYPES:
        raise InputError(f"--type {weight_type}: unknown GGUF weight type; choose one of {', '.join(GGUF_TYPES)}")
    return weight_type


def recorded_tensor_formats(checkpoint: Path) -> list[TensorFormat]:
    """The GGUF format of every text tensor the slice `checkpoint` stores, from the weight
    formats its provenance records (the config's, re-read on the slice's own kept layers)."""
    return tensor_formats(_recorded_plan(checkpoint), inventory_from_checkpoint(checkpoint))


def _recorded_plan(checkpoint: Path) -> SlicePlan:
    """The plan of the slice `checkpoint` on its own (renumbered) layers with its recorded formats."""
    provenance_file = checkpoint / PROVENANCE_NAME
    try:
        provenance = json.loads(provenance_file.read_text(encoding="utf-8"))
        recorded = provenance["slice_config"].get("weight_formats")
        kept = [int(layer) for layer in provenance["kept_layers"]]
    except FileNotFoundError:
        raise InputError(f"{checkpoint}: no {PROVENANCE_NAME}, so no weight formats are recorded; pass a slice "
                         "written by `matformer slice`, or a --type") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{provenance_file}: cannot read its slice config ({error}); slice again") from None
    if recorded is None:
        raise InputError(f"{checkpoint}: its slice config names no weight_formats; give one in the config and slice "
                         "again, or pass a --type")
    formats = WeightFormats.model_validate(recorded)
    facts = facts_from_checkpoint(checkpoint)
    if len(kept) != facts.num_layers:
        raise InputError(f"{provenance_file}: records {len(kept)} kept layers, but {checkpoint / 'config.json'} has "
                         f"{facts.num_layers}; slice again")
    # A preset names no layers.
    own = formats if formats.preset else formats.model_copy(update={"layers": formats.for_layers(kept)})
    config = SliceConfig(name=checkpoint.name, ffn_widths=tuple(facts.ffn_widths), weight_formats=own)
    return SlicePlan.build(config, facts, str(provenance_file))


def convert_to_gguf(checkpoint: Path, out: Path, weight_type: str, timeout: float = 3600) -> Path:
    """Write `checkpoint` (a Hugging Face directory) as GGUF file `out` of `weight_type`."""
    weight_type = check_gguf_type(weight_type)
    python = interpreter("llama.cpp")
    tree = source_tree(env_directory("llama.cpp")) / "vendor" / "llama.cpp"
    if weight_type == PER_TENSOR:
        if uses_llama_quantize(_recorded_plan(checkpoint)):
            return _quantize_typed(checkpoint, out, python, tree, timeout)
        return _convert_typed(checkpoint, out, python, tree, timeout)
    if weight_type in CONVERTER_TYPES:
        _child([str(python), str(tree / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", weight_type,
                "--outfile", str(out)], "llama.cpp's converter", checkpoint, timeout)
        return out
    _quantize(checkpoint, out, weight_type, None, python, tree, timeout)
    return out


def _source(checkpoint: Path) -> str:
    """The checkpoint's own type as the converter writes it: what llama-quantize reads."""
    return SOURCE_TYPES.get(facts_from_checkpoint(checkpoint).dtype, "f32")


def _quantize(checkpoint: Path, out: Path, preset: str, types: dict[str, str] | None, python: Path, tree: Path,
              timeout: float) -> dict[str, str]:
    """The converter at the checkpoint's own type, then llama.cpp's quantizer with `preset`
    (and, with `types`, the type of each tensor by its name here); returns the file's tensor
    names by their names here."""
    first = out.with_name(f".{out.name}.source")
    names = out.with_name(f".{out.name}.names.json")
    overrides = out.with_name(f".{out.name}.types.json")
    try:
        _child([str(python), str(RUNNERS / "llamacpp_convert.py"), str(tree), str(checkpoint), str(first), "--names",
                str(names), _source(checkpoint)], "llama.cpp's converter", checkpoint, timeout)
        command = [str(python), str(RUNNERS / "llamacpp_quantize.py"), str(first), str(out), preset]
        if types is not None:
            gguf_names = json.loads(names.read_text(encoding="utf-8"))
            overrides.write_text(json.dumps({gguf_names[name]: kind for name, kind in types.items()
                                             if name in gguf_names}), encoding="utf-8")
            command.append(str(overrides))
        _child(command, "llama.cpp's quantizer", first, timeout)
        return json.loads(names.read_text(encoding="utf-8"))
    finally:
        for path in (first, names, overrides):
            path.unlink(missing_ok=True)


def _quantize_typed(checkpoint: Path, out: Path, python: Path, tree: Path, timeout: float) -> Path:
    """A slice whose formats are llama-quantize's (a preset, or K-quants): its file made by
    llama.cpp's quantizer, each tensor the type the formats give it; the file's types and bytes
    checked against the count, tensor by tensor."""
    plan = _recorded_plan(checkpoint)
    tensors = recorded_tensor_formats(checkpoint)
    facts = facts_from_checkpoint(checkpoint)
    names = {tensor.name: facts.family.text_only_name(tensor.name, facts.is_multimodal) or tensor.name
             for tensor in tensors}
    preset = plan.config.weight_formats.preset
    types = None if preset else {names[tensor.name]: tensor.asked for tensor in tensors if len(tensor.shape) > 1}
    gguf_names = _quantize(checkpoint, out, preset or "q4_k_m", types, python, tree, timeout)
    _check_bytes(out, tensors)
    _check_types(out, tensors, {tensor.name: gguf_names.get(names[tensor.name]) for tensor in tensors})
    return out


def _check_types(out: Path, tensors: list[TensorFormat], gguf_names: dict[str, str | None]) -> None:
    """Each tensor's type in the file is the one counted (tensors the converter stacks into one,
    AltUp's projections, are checked by bytes only)."""
    from gguf import GGUFReader

    written = {tensor.name: tensor.tensor_type.name.lower() for tensor in GGUFReader(out).tensors}
    named = Counter(gguf_names.values())
    wrong = [f"{tensor.name} ({gguf_names[tensor.name]}): {written[gguf_names[tensor.name]]}, counted {tensor.format}"
             for tensor in tensors if named[gguf_names[tensor.name]] == 1 and gguf_names[tensor.name] in written
             and written[gguf_names[tensor.name]] != tensor.format]
    if wrong:
        raise ConversionError(f"{out}: llama.cpp typed {len(wrong)} tensor(s) otherwise than counted, first "
                              f"{wrong[0]} (please report this)")


def _check_bytes(out: Path, tensors: list[TensorFormat]) -> None:
    expected: Counter[str] = Counter()
    for tensor in tensors:
        expected[tensor.format] += tensor.nbytes
    written = gguf_bytes_by_type(out)
    if written != dict(expected):
        raise ConversionError(f"{out}: llama.cpp wrote {_bytes_line(written)} where the slice's weight formats "
                              f"count {_bytes_line(expected)}; the byte accounting and llama.cpp disagree (please "
                              "report this)")


def _convert_typed(checkpoint: Path, out: Path, python: Path, tree: Path, timeout: float) -> Path:
    """The converter with a type per tensor from the slice's weight formats; the file's bytes
    per type checked against the formats' count."""
    tensors = recorded_tensor_formats(checkpoint)
    facts = facts_from_checkpoint(checkpoint)
    names = {tensor.name: facts.family.text_only_name(tensor.name, facts.is_multimodal) or tensor.name
             for tensor in tensors}
    types_file = out.with_name(f".{out.name}.types.json")
    types_file.write_text(json.dumps({names[t.name]: t.format for t in tensors if len(t.shape) > 1}), encoding="utf-8")
    try:
        _child([str(python), str(RUNNERS / "llamacpp_convert.py"), str(tree), str(checkpoint), str(out),
                str(types_file)], "llama.cpp's converter", checkpoint, timeout)
    finally:
        types_file.unlink(missing_ok=True)
    _check_bytes(out, tensors)
    return out


def gguf_bytes_by_type(path: Path) -> dict[str, int]:
    """Bytes of tensor data in a GGUF file, by tensor type ("q4_0": ...), read by gguf's reader."""
    from gguf import GGUFReader

    by_type: Counter[str] = Counter()
    for tensor in GGUFReader(path).tensors:
        by_type[tensor.tensor_type.name.lower()] += int(tensor.n_bytes)
    return dict(by_type)


def _bytes_line(by_type: dict[str, int]) -> str:
    return ", ".join(f"{count:,} bytes of {name}" for name, count in sorted(by_type.items()))


def default_type(checkpoint: Path) -> str:
    """`per-tensor` for a slice whose config names weight formats, else f16."""
    try:
        provenance = json.loads((checkpoint / PROVENANCE_NAME).read_text(encoding="utf-8"))
        recorded = provenance["slice_config"].get("weight_formats")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = None
    return PER_TENSOR if recorded is not None else "f16"


def export_gguf(checkpoint: Path, out: Path, weight_type: str | None = None, force: bool = False) -> Path:
    """`convert_to_gguf` as a user's export: `out` appears whole or not at all, never inside the
    checkpoint, and replaces only a GGUF file (with `force`). `weight_type` None: `default_type`."""
    if not (checkpoint / "config.json").is_file():
        raise InputError(f"{checkpoint}: no config.json; pass a directory written by `matformer slice`")
    weight_type = check_gguf_type(weight_type or default_type(checkpoint))
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


def _child(command: list[str], what: str, subject: Path, timeout: float) -> None:
    """Run one llama.cpp tool on `subject`; its failure is one line with the tool's own last error line."""
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise ConversionError(f"{what} did not finish within {timeout:.0f} s") from error
    if finished.returncode:
        raise ConversionError(f"{what} refused {subject}: {last_error_line(finished.stderr)}")


def last_error_line(stderr: str) -> str:
    """The line of a tool's stderr that says what went wrong (its last error, else its last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("Error", "error", "ASSERT", "assert", "failed", "Exception")):
            return line[:500]
    return lines[-1][:500] if lines else "no message"
