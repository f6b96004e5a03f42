"""The streaming slicer: a smaller Hugging Face checkpoint from a full Gemma 3n one.

Memory is bounded by `chunk_bytes`: tensors are copied in row chunks read with pread and
written through a streaming shard writer, so neither a whole shard nor a whole large tensor
(E4B's 4.7 GB PLE table) is ever held. The output appears atomically: everything is written
to a temporary directory beside `--out`, which is renamed into place at the very end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matlab.arch.facts import facts_from_checkpoint
from matlab.arch.inventory import StoredTensor
from matlab.errors import CheckpointError, InputError
from matlab.io.reader import CheckpointFiles, RangeReader, TensorInfo
from matlab.io.staging import staged_output
from matlab.io.writer import OutputTensor, ShardedWriter
from matlab.plan import SlicePlan, TensorSpec
from matlab.plan.accounting import ParamReport, count_parameters
from matlab.progress import NO_PROGRESS, Progress
from matlab.runtimes import check_runtime, require_layout, require_runtime
from matlab.runtimes.layouts import consumer_kv_fills, layout_config, runtime_layout, target_spec, text_weights_only
from matlab.slice_config import SliceConfig
from matlab.slice_config.validation import Problem
from matlab.slicing.adapters import AdapterSlice, cut_adapter
from matlab.slicing.card import write_card_and_provenance

DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Files copied beside the weights; processor files only when the towers are kept.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")
ADAPTER_FOLDER = "adapter"

@dataclass(frozen=True)
class SliceResult:
    out: Path
    plan: SlicePlan
    params: ParamReport
    tensors_written: int
    bytes_read: int
    bytes_written: int
    shards: int
    bytes_verified: int
    warnings: tuple[Problem, ...]
    adapter: AdapterSlice | None = None  # the sliced LoRA adapter in out/adapter, if one was given


def source_rows(info: TensorInfo, spec: TensorSpec, reader: RangeReader, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the output tensor, cut from the source: [rows, output row bytes] uint8."""
    pieces, position = [], 0
    for first, last in spec.rows or ((0, info.shape[0]),):
        begin, end = max(start, position), min(stop, position + last - first)
        if begin < end:
            pieces.append(reader.read_rows(info, first + begin - position, first + end - position))
        position += last - first
    rows = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    if spec.cols is not None:
        column_bytes = info.row_bytes // info.shape[1]
        rows = np.concatenate([rows[:, a * column_bytes:b * column_bytes] for a, b in spec.cols], axis=1)
    return rows


def _copy_tensor(info: TensorInfo, spec: TensorSpec, reader: RangeReader, writer: ShardedWriter,
                 chunk_bytes: int, progress: Progress) -> None:
    """Copy the kept rows (and columns) of one tensor in chunks of at most ~chunk_bytes."""
    writer.begin(spec.target)
    if not info.shape or info.nbytes == 0:  # a scalar or an empty tensor: one read
        writer.write(reader.read(info.file, info.offset, info.nbytes).tobytes())
        return
    row_bytes = info.row_bytes
    if spec.cols is None:  # whole rows: contiguous byte ranges, copied inside the kernel
        for start, stop in spec.rows or ((0, info.shape[0]),):
            for chunk_start in range(start * row_bytes, stop * row_bytes, chunk_bytes):
                length = min(stop * row_bytes, chunk_start + chunk_bytes) - chunk_start
                writer.copy_range(reader.fd(info.file), info.offset + chunk_start, length)
                reader.bytes_read += length
                progress.advance(length)
        return
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    for start in range(0, spec.shape[0], rows_per_chunk):
        rows = source_rows(info, spec, reader, start, min(spec.shape[0], start + rows_per_chunk))
        data = np.ascontiguousarray(rows).reshape(-1).data  # 1-D uint8: len() counts bytes
        writer.write(data)
        progress.advance(len(data))


def plan_tensors(files: CheckpointFiles, plan: SlicePlan, text_only: bool) -> list[tuple[TensorInfo, TensorSpec]]:
    """The output tensor of each source tensor that is kept, in source file and offset order."""
    work = []
    for info in files.tensors.values():
        spec = plan.tensor_spec(info.name, info.shape, text_only=text_only)
        if spec is not None:
            work.append((info, spec))
    return work


def _sample_rows(rows: int, verify_all: bool, chunk: int) -> list[tuple[int, int]]:
    if verify_all:
        return [(start, min(rows, start + chunk)) for start in range(0, rows, chunk)]
    return [(row, row + 1) for row in sorted({0, rows // 2, rows - 1})]


def verify_output(directory: Path, work: list[tuple[TensorInfo, TensorSpec]], verify_all: bool = False,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, fills: list[OutputTensor] = ()) -> int:
    """Read the written checkpoint back: every planned tensor is present with its shape and
    dtype and no other is, and its bytes equal the source bytes the plan selects: the first,
    middle and last row of every tensor (1-D and scalar tensors whole), or every byte with
    `verify_all`; `fills` (a runtime's zero-filled tensors) must read back as zeros. Returns the
    bytes compared; raises CheckpointError on any difference."""
    written = CheckpointFiles(directory).tensors
    if len(written) != len(work) + len(fills):
        raise CheckpointError(f"read-back check failed: {len(written)} tensors written, "
                              f"{len(work) + len(fills)} planned")
    compared = 0
    with RangeReader() as source, RangeReader() as output:
        for fill in fills:
            got = written.get(fill.name)
            if got is None or got.shape != fill.shape or output.read(got.file, got.offset, got.nbytes).any():
                raise CheckpointError(f"read-back check failed: {fill.name} is not {list(fill.shape)} zeros")
            compared += got.nbytes
        for info, spec in work:
            got = written.get(spec.target)
            if got is None or got.shape != spec.shape or got.dtype != info.dtype:
                raise CheckpointError(f"read-back check failed for {spec.target}: expected {info.dtype} "
                                      f"{list(spec.shape)}, found {'nothing' if got is None else list(got.shape)}")
            if len(spec.shape) < 2 or got.nbytes == 0:  # scalars, vectors and empty tensors: whole
                same = bytes(source.read(info.file, info.offset, info.nbytes)) == \
                    bytes(output.read(got.file, got.offset, got.nbytes))
                compared += got.nbytes
                if not same:
                    raise CheckpointError(f"read-back check failed: {spec.target} differs from {info.name}")
                continue
            for start, stop in _sample_rows(spec.shape[0], verify_all, max(1, chunk_bytes // got.row_bytes)):
                expected = source_rows(info, spec, source, start, stop)
                if not np.array_equal(expected, output.read_rows(got, start, stop)):
                    raise CheckpointError(f"read-back check failed: rows {start}..{stop - 1} of {spec.target} "
                                          f"differ from the source {info.name}")
                compared += expected.size
    return compared


def slice_checkpoint(source: str | Path, config: SliceConfig, out: str | Path, *, config_source: str = "config",
                     text_only: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, force: bool = False,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, command: str | None = None,
                     verify_all: bool = False, runtime: str | None = None, check_rules: bool = True,
                     adapter: str | Path | None = None, progress: Progress = NO_PROGRESS) -> SliceResult:
    """Write the submodel `config` of the checkpoint at `source` to `out`, read it back
    (`verify_output`) and only then make it visible. With `runtime`, the config must satisfy that
    runtime's rules (`matlab.runtimes`), and the checkpoint is written in the layout it reads
    (`matlab.runtimes.layouts`); `check_rules=False` writes the layout only (the conformance matrix
    measures what a runtime does with slices its rules refuse). `adapter`, a PEFT LoRA adapter
    trained on `source`, is cut the same way and written to `out/adapter` (`matlab.slicing.adapters`).
    `progress` counts bytes written."""
    source, out = Path(source), Path(out)
    facts = facts_from_checkpoint(source)
    plan = SlicePlan.build(config, facts, config_source)
    if check_rules:
        require_runtime(plan, runtime, config_source)
        require_layout(runtime, text_only)
    layout = runtime_layout(check_runtime(runtime) if runtime else None)
    if layout.text_weights_only and not layout.multimodal_text:
        text_only = True  # a layout that drops the towers and writes a text config is a text-only slice
    files = CheckpointFiles(source)
    sliced_adapter = None
    if adapter is not None:
        if runtime not in (None, "transformers", "vllm"):
            raise InputError(f"--adapter with --runtime {runtime}: adapters are sliced for transformers (and "
                             "PEFT) and vLLM (--enable-lora) only; slice without --runtime, or merge the adapter first")
        sliced_adapter = cut_adapter(Path(adapter), files, plan, text_only=text_only)
    work = [(info, target_spec(layout, plan, spec))
            for info, spec in plan_tensors(files, plan, text_weights_only(layout, text_only))]
    outputs = [OutputTensor(spec.target, info.dtype, spec.shape) for info, spec in work]
    fills = consumer_kv_fills(layout, plan, text_only, {output.name for output in outputs},
                              work[0][0].dtype if work else "F32")
    outputs += fills
    inventory = {name: StoredTensor(info.shape, info.dtype) for name, info in files.tensors.items()}
    params = count_parameters(inventory, facts, plan, text_only=text_only)

    config_file = Path(config_source) if Path(config_source).is_file() else None
    inputs = (source, *files.files, config_file, adapter)
    with staged_output(out, force, inputs=inputs) as temporary:
        with ShardedWriter(temporary, outputs, max_shard_bytes) as writer, RangeReader() as reader:
            progress.start(writer.total_size, description="slicing")
            for info, spec in work:
                _copy_tensor(info, spec, reader, writer, chunk_bytes, progress)
            for fill in fills:
                writer.begin(fill.name)
                writer.write(bytes(fill.nbytes))
                progress.advance(fill.nbytes)
            bytes_read = reader.bytes_read
            writer.close()
        verified = verify_output(temporary, work, verify_all, chunk_bytes, fills)
        config_json = layout_config(plan, text_only, layout)
        (temporary / "config.json").write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        for name in TOKENIZER_FILES + (() if text_only else PROCESSOR_FILES):
            if (source / name).is_file():
                shutil.copy2(source / name, temporary / name)
        adapter_slice = None
        if sliced_adapter is not None:
            (temporary / ADAPTER_FOLDER).mkdir()
            adapter_slice = sliced_adapter.write(temporary / ADAPTER_FOLDER, str(out))
        write_card_and_provenance(temporary, plan, params, source=source, config_source=config_source,
                                  text_only=text_only, command=command)
    return SliceResult(out, plan, params, len(outputs), bytes_read, writer.bytes_written, len(writer.shards),
                       verified, plan.warnings, adapter_slice)
