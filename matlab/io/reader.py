"""Lazy, bounded-memory reading of sharded safetensors checkpoints.

safetensors' `safe_open` memory-maps a whole shard, and every page it touches counts in the
process's resident set; slicing the 4.7 GB PLE table through it would show gigabytes of RSS.
This reader lets the `safetensors` library validate each header (opening a file maps it but
reads no tensor data), then reads the byte ranges it needs with `os.pread`, so memory is
bounded by the largest chunk requested.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from safetensors import SafetensorError, safe_open

from matlab.errors import CheckpointError
from matlab.util.dtypes import SAFETENSORS_SIZES

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


def _safetensors_error(path: Path, error: Exception) -> CheckpointError:
    detail = str(error).removeprefix("Error while deserializing header: ")
    return CheckpointError(f"{path}: not a valid safetensors file ({detail}); download or copy it again")


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the absolute offset where its data starts.

    The `safetensors` library validates the file first (it opens without reading tensor data):
    known dtypes, byte lengths equal to dtype x shape, contiguous non-overlapping offsets that
    cover the file exactly. Only a header it accepts is parsed here, for the offsets pread needs.
    """
    try:
        with safe_open(path, framework="numpy"):
            pass
    except SafetensorError as error:
        raise _safetensors_error(path, error) from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror}); check the file and its permissions") from None
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:  # changed under us since safetensors read it
        raise CheckpointError(f"{path}: unreadable safetensors header ({error})") from None
    unknown = sorted({entry["dtype"] for name, entry in header.items()
                      if name != "__metadata__" and entry["dtype"] not in SAFETENSORS_SIZES})
    if unknown:
        raise CheckpointError(f"{path}: tensors of dtype {', '.join(unknown)}, which MatFormer Lab does not handle; "
                              f"convert the checkpoint to one of {', '.join(SAFETENSORS_SIZES)}")
    return header, 8 + length


def _shard_name(directory: Path, index_path: Path, tensor: object, name: object) -> str:
    """A shard file name from the index, refused unless it stays inside the checkpoint folder.

    Only the name is checked, not where a link points: the Hub cache lays out a snapshot as
    links to blobs outside it, and those must keep working."""
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{index_path}: weight_map[{tensor!r}] is {name!r}, not a shard file name; "
                              "download or copy the checkpoint again")
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in relative.parts:
        raise CheckpointError(f"{index_path}: weight_map[{tensor!r}] names {name!r}, outside the checkpoint folder "
                              f"{directory}; a checkpoint names its shards by file name only, so this index "
                              "cannot be trusted: download it again from its source")
    return name


def _index_weight_map(directory: Path, index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_bytes())
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({error}); download it again") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: not a valid safetensors index (no weight_map of tensor names to shard "
                              "files); download it again")
    return {tensor: _shard_name(directory, index_path, tensor, name) for tensor, name in weight_map.items()}


def has_weights(directory: Path) -> bool:
    """Whether `directory` holds safetensors weights (an index or a single file)."""
    return (directory / INDEX_NAME).is_file() or (directory / SINGLE_NAME).is_file()


def _shard_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    index_path = directory / INDEX_NAME
    if index_path.is_file():
        weight_map = _index_weight_map(directory, index_path)
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (directory / name).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: shard(s) {', '.join(missing)} named in {INDEX_NAME} are missing")
        return [directory / name for name in names], weight_map
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME], None
    raise CheckpointError(f"{directory}: no {INDEX_NAME} or {SINGLE_NAME}; is this a safetensors checkpoint?")


class CheckpointFiles:
    """The tensors of a checkpoint directory, in file and offset order, every header validated."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.files, weight_map = _shard_files(self.directory)
        tensors: dict[str, TensorInfo] = {}
        for path in self.files:
            header, data_start = read_header(path)
            for name, entry in sorted(((n, e) for n, e in header.items() if n != "__metadata__"),
                                      key=lambda item: item[1]["data_offsets"][0]):
                if name in tensors:
                    raise CheckpointError(f"{path}: tensor {name} is stored in {tensors[name].file.name} too; "
                                          "download or copy the checkpoint again")
                if weight_map is not None and weight_map.get(name) != path.relative_to(self.directory).as_posix():
                    raise CheckpointError(f"{path}: holds tensor {name}, which {INDEX_NAME} places in "
                                          f"{weight_map.get(name, 'no shard')}; download or copy the checkpoint again")
                begin, end = entry["data_offsets"]
                tensors[name] = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), path, data_start + begin,
                                           end - begin)
        if weight_map is not None:
            absent = sorted(set(weight_map) - set(tensors))
            if absent:
                raise CheckpointError(f"{self.directory / INDEX_NAME}: names {len(absent)} tensor(s) its shards do not "
                                      f"hold ({', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}); "
                                      "download or copy the checkpoint again")
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
