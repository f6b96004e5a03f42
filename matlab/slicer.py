"""The streaming slicer: a smaller Hugging Face checkpoint from a full Gemma 3n one.

Memory is bounded by `chunk_bytes`: tensors are copied in row chunks read with pread and
written through a streaming shard writer, so neither a whole shard nor a whole large tensor
(E4B's 4.7 GB PLE table) is ever held. The output appears atomically: everything is written
to a temporary directory beside `--out`, which is renamed into place at the very end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matlab.accounting import ParamReport, count_parameters
from matlab.architecture import facts_from_checkpoint
from matlab.errors import CheckpointError
from matlab.inventory import StoredTensor
from matlab.io.reader import CheckpointFiles, RangeReader, TensorInfo
from matlab.io.staging import staged_output
from matlab.io.writer import OutputTensor, ShardedWriter
from matlab.model_card import write_card_and_provenance
from matlab.plan import SlicePlan, TensorSpec
from matlab.slice_config import SliceConfig
from matlab.validation import Problem

DEFAULT_CHUNK_BYTES = 64 * 2**20
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Files copied beside the weights; processor files only when the towers are kept.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class SliceResult:
    out: Path
    plan: SlicePlan
    params: ParamReport
    tensors_written: int
    bytes_read: int
    bytes_written: int
    shards: int
    warnings: tuple[Problem, ...]


def _copy_tensor(info: TensorInfo, spec: TensorSpec, reader: RangeReader, writer: ShardedWriter,
                 chunk_bytes: int, progress: ProgressCallback | None) -> None:
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
                if progress:
                    progress(length)
        return
    column_bytes = row_bytes // info.shape[1]
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    for start, stop in spec.rows or ((0, info.shape[0]),):
        for chunk_start in range(start, stop, rows_per_chunk):
            rows = reader.read_rows(info, chunk_start, min(stop, chunk_start + rows_per_chunk))
            rows = np.concatenate([rows[:, a * column_bytes:b * column_bytes] for a, b in spec.cols], axis=1)
            data = np.ascontiguousarray(rows).reshape(-1).data  # 1-D uint8: len() counts bytes
            writer.write(data)
            if progress:
                progress(len(data))


def plan_tensors(files: CheckpointFiles, plan: SlicePlan, text_only: bool) -> list[tuple[TensorInfo, TensorSpec]]:
    """The output tensor of each source tensor that is kept, in source file and offset order."""
    work = []
    for info in files.tensors.values():
        spec = plan.tensor_spec(info.name, info.shape, text_only=text_only)
        if spec is not None:
            work.append((info, spec))
    return work


def _verify(directory: Path, expected: list[OutputTensor]) -> None:
    written = CheckpointFiles(directory).tensors
    for tensor in expected:
        got = written.get(tensor.name)
        if got is None or got.shape != tensor.shape or got.nbytes != tensor.nbytes:
            raise CheckpointError(f"read-back check failed for {tensor.name}: expected {list(tensor.shape)}")
    if len(written) != len(expected):
        raise CheckpointError(f"read-back check failed: {len(written)} tensors written, {len(expected)} planned")


def slice_checkpoint(source: str | Path, config: SliceConfig, out: str | Path, *, config_source: str = "config",
                     text_only: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, force: bool = False,
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES, command: str | None = None,
                     on_start: Callable[[int], None] | None = None,
                     progress: ProgressCallback | None = None) -> SliceResult:
    """Write the submodel `config` of the checkpoint at `source` to `out`.

    Args:
        on_start: called once with the number of bytes to be written (for a progress bar).
        progress: called with the bytes written after each chunk.
    """
    source, out = Path(source), Path(out)
    facts = facts_from_checkpoint(source)
    plan = SlicePlan.build(config, facts, config_source)
    files = CheckpointFiles(source)
    work = plan_tensors(files, plan, text_only)
    outputs = [OutputTensor(spec.target, info.dtype, spec.shape) for info, spec in work]
    inventory = {name: StoredTensor(info.shape, info.dtype) for name, info in files.tensors.items()}
    params = count_parameters(inventory, facts, plan, text_only=text_only)

    with staged_output(out, force) as temporary:
        with ShardedWriter(temporary, outputs, max_shard_bytes) as writer, RangeReader() as reader:
            if on_start:
                on_start(writer.total_size)
            for info, spec in work:
                _copy_tensor(info, spec, reader, writer, chunk_bytes, progress)
            bytes_read = reader.bytes_read
            writer.close()
        _verify(temporary, outputs)
        (temporary / "config.json").write_text(json.dumps(plan.sliced_config(text_only), indent=2) + "\n",
                                               encoding="utf-8")
        for name in TOKENIZER_FILES + (() if text_only else PROCESSOR_FILES):
            if (source / name).is_file():
                shutil.copy2(source / name, temporary / name)
        write_card_and_provenance(temporary, plan, params, source=source, config_source=config_source,
                                  text_only=text_only, command=command)
    return SliceResult(out, plan, params, len(outputs), bytes_read, writer.bytes_written, len(writer.shards),
                       plan.warnings)
