"""Streaming sharded safetensors writer.

safetensors' `save_file` needs every tensor whole in memory; a 4 GB PLE table cannot be
written that way within a bounded memory budget. Output shapes are known before any byte is
copied, so this writer lays out every shard's header up front and then appends tensor bytes
in chunks, checking the running byte count of each tensor.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from matlab.io.reader import INDEX_NAME
from matlab.util.dtypes import SAFETENSORS_SIZES

# copy_file_range errors that mean "not between these files": fall back to pread and write.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = SAFETENSORS_SIZES[self.dtype]
        for size in self.shape:
            count *= size
        return count


def _header_bytes(tensors: list[OutputTensor]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format asks for 8-byte aligned data
    return struct.pack("<Q", len(text)) + text


def plan_shards(tensors: list[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    """Group tensors in order into shards of at most `max_shard_bytes` (a larger tensor gets its own)."""
    shards: list[list[OutputTensor]] = [[]]
    running = 0
    for tensor in tensors:
        if shards[-1] and running + tensor.nbytes > max_shard_bytes:
            shards.append([])
            running = 0
        shards[-1].append(tensor)
        running += tensor.nbytes
    return shards


class ShardedWriter:
    """Writes a fixed, ordered list of tensors into safetensors shards plus an index."""

    def __init__(self, directory: Path, tensors: list[OutputTensor], max_shard_bytes: int):
        self.directory = directory
        self.shards = plan_shards(tensors, max_shard_bytes)
        count = len(self.shards)
        self.shard_names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._queue = [(shard_index, tensor) for shard_index, shard in enumerate(self.shards) for tensor in shard]
        self._position = -1
        self._remaining = 0
        self._handle: BinaryIO | None = None
        self._open_shard = -1
        self.bytes_written = 0
        # macOS and Windows have no copy_file_range.
        self._kernel_copy = hasattr(os, "copy_file_range")

    @property
    def total_size(self) -> int:
        return sum(tensor.nbytes for shard in self.shards for tensor in shard)

    def begin(self, name: str) -> None:
        """Start the next tensor, which must be `name`."""
        if self._remaining:
            raise RuntimeError(f"tensor {self._queue[self._position][1].name} is missing {self._remaining} bytes")
        self._position += 1
        shard_index, tensor = self._queue[self._position]
        if tensor.name != name:
            raise RuntimeError(f"expected tensor {tensor.name}, got {name}")
        if shard_index != self._open_shard:
            self._close_handle()
            # Unbuffered, so that kernel-side copies (copy_range) and writes share one file offset.
            self._handle = open(self.directory / self.shard_names[shard_index], "wb", buffering=0)  # noqa: SIM115
            self._handle.write(_header_bytes(self.shards[shard_index]))
            self._open_shard = shard_index
        self._remaining = tensor.nbytes

    def write(self, data: bytes | memoryview) -> None:
        if len(data) > self._remaining:
            raise RuntimeError(f"tensor {self._current_name} got {len(data) - self._remaining} bytes too many")
        self._write_all(data)
        self._remaining -= len(data)
        self.bytes_written += len(data)

    def copy_range(self, source_fd: int, offset: int, length: int) -> None:
        """Append `length` bytes of `source_fd` from `offset`, copied inside the kernel
        (`os.copy_file_range`: no user-space buffer at all) where the platform and the two
        filesystems allow it, else read with pread and written (one buffer of `length`)."""
        if length > self._remaining:
            raise RuntimeError(f"tensor {self._current_name} got {length - self._remaining} bytes too many")
        done = 0
        while done < length and self._kernel_copy:
            try:
                copied = os.copy_file_range(source_fd, self._handle.fileno(), length - done, offset + done)
            except OSError as error:
                if error.errno not in _NO_KERNEL_COPY:
                    raise
                self._kernel_copy = False  # e.g. EXDEV across filesystems on older kernels
                break
            if copied == 0:
                raise OSError(f"source ended {length - done} bytes early")
            done += copied
        if done < length:
            data = os.pread(source_fd, length - done, offset + done)
            if len(data) != length - done:
                raise OSError(f"source ended {length - done - len(data)} bytes early")
            self._write_all(data)
        self._remaining -= length
        self.bytes_written += length

    def close(self) -> None:
        """Finish the last shard and write the index; raises if any tensor is incomplete."""
        if self._remaining or self._position != len(self._queue) - 1:
            raise RuntimeError("writer closed before every tensor was written")
        self._close_handle()
        weight_map = {tensor.name: self.shard_names[i] for i, shard in enumerate(self.shards) for tensor in shard}
        index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    @property
    def _current_name(self) -> str:
        return self._queue[self._position][1].name

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        written = 0
        while written < len(view):  # an unbuffered write may be partial
            written += self._handle.write(view[written:])

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close_handle()  # on failure the caller's staging directory is removed whole
