"""Lazy, bounded-memory reading of sharded safetensors checkpoints.

safetensors' `safe_open` memory-maps a whole shard, and every page it touches counts in the
process's resident set; slicing the 4.7 GB PLE table through it would show gigabytes of RSS.
This reader parses the (documented, 8-byte length + JSON) header itself and reads the byte
ranges it needs with `os.pread`, so memory is bounded by the largest chunk requested.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matlab.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie on disk."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def row_bytes(self) -> int:
        rows = self.shape[0] if self.shape else 1
        return self.nbytes // rows if rows else 0


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the absolute offset where its data starts."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > 100_000_000:
                raise CheckpointError(f"{path}: header length {length} is implausible; the file is corrupt")
            header = json.loads(handle.read(length))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors header ({error})") from None
    return header, 8 + length


def _shard_files(directory: Path) -> list[Path]:
    index_path = directory / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({error})") from None
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: shard(s) {', '.join(missing)} named in {INDEX_NAME} are missing")
        return [directory / name for name in names]
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME]
    raise CheckpointError(f"{directory}: no {INDEX_NAME} or {SINGLE_NAME}; is this a safetensors checkpoint?")


class CheckpointFiles:
    """The tensors of a checkpoint directory, in file and offset order."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.files = _shard_files(self.directory)
        tensors: dict[str, TensorInfo] = {}
        for path in self.files:
            header, data_start = read_header(path)
            promised = data_start + max((e["data_offsets"][1] for n, e in header.items() if n != "__metadata__"),
                                        default=0)
            if path.stat().st_size < promised:
                raise CheckpointError(f"{path}: truncated; its header promises {promised} bytes but the file has "
                                      f"{path.stat().st_size}; download or copy it again")
            for name, entry in sorted(((n, e) for n, e in header.items() if n != "__metadata__"),
                                      key=lambda item: item[1]["data_offsets"][0]):
                begin, end = entry["data_offsets"]
                tensors[name] = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), path, data_start + begin,
                                           end - begin)
        self.tensors = tensors


class RangeReader:
    """Reads byte ranges with pread, keeping at most one file open at a time."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._fd: int | None = None
        self.bytes_read = 0

    def fd(self, path: Path) -> int:
        """The open descriptor of `path`, closing the previous file if it differs."""
        if path != self._path:
            self.close()
            self._fd = os.open(path, os.O_RDONLY)
            self._path = path
        return self._fd

    def read(self, path: Path, offset: int, length: int) -> np.ndarray:
        data = os.pread(self.fd(path), length, offset)
        if len(data) != length:
            raise CheckpointError(f"{path}: truncated; expected {length} bytes at offset {offset}, got {len(data)}")
        self.bytes_read += length
        return np.frombuffer(data, dtype=np.uint8)

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a tensor as a uint8 array of shape [rows, row_bytes]."""
        row_bytes = info.row_bytes
        data = self.read(info.file, info.offset + start * row_bytes, (stop - start) * row_bytes)
        return data.reshape(stop - start, row_bytes)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._path = None, None

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
