"""Run directories' files: written whole or not at all, read with one line naming what is wrong.

Sweeps, searches and training runs share these: a file replaced atomically (temporary file,
fsync, rename), a JSON file or a JSON-lines journal read back with every defect named (the
file, the line, what to do), a last line cut short by a kill dropped where the caller allows
it, and a run's identity (what it computes: the checkpoint by its config and index, without
hashing gigabytes of weights) compared with the one recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from matlab.errors import InputError
from matlab.io.reader import INDEX_NAME


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json_file(path: Path, fix: str) -> Any:
    """The JSON value in `path`; an InputError naming the file, what is wrong with it and `fix`
    (what to do) for a file that cannot be read, is not UTF-8 or is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror}); {fix}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start}); {fix}") from None
    if not text.strip():
        raise InputError(f"{path}: empty; {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}); {fix}") from None
    except (ValueError, RecursionError):  # an integer too long to convert, arrays nested too deep
        raise InputError(f"{path}: not JSON that can be read; {fix}") from None


def json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words: 'an object', 'a list', 'a string', 'a number'..."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


# What `jsonl_values` yields in place of a value for a last line cut short that it drops.
TORN_LINE = object()


def jsonl_values(path: Path, fix: str, drop_torn: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file, read as it goes; a
    line that is not JSON is an InputError naming the file, the line and `fix`, except, with
    `drop_torn`, a last line cut short (no newline), yielded as (number, TORN_LINE). OSError
    passes through, for the caller to say what to do."""
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:  # without its newline, so that a column counts within the line
                value = json.loads(raw.removesuffix(b"\n").decode("utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{path}: line {number} is not UTF-8 text; {fix}") from None
            except json.JSONDecodeError as error:
                if torn and drop_torn:
                    yield number, TORN_LINE
                    return
                raise InputError(f"{path}: line {number} is not valid JSON (column {error.colno}"
                                 f"{', cut short' if torn else ''}); {fix}") from None
            except (ValueError, RecursionError):  # an integer too long to convert, arrays nested too deep
                raise InputError(f"{path}: line {number} is not JSON that can be read; {fix}") from None
            yield number, value



def changed_keys(previous: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The identity fields in which `identity` differs from a recorded one."""
    identity = json.loads(json.dumps(identity))  # as it reads back from search.json (tuples as lists)
    return sorted(key for key in set(identity) | set(previous) if previous.get(key) != identity.get(key))



def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def checkpoint_identity(directory: Path) -> dict[str, str | None]:
    """What identifies a source checkpoint without hashing gigabytes of weights."""
    return {"path": str(directory.resolve()), "config_sha256": _sha256(directory / "config.json"),
            "index_sha256": _sha256(directory / INDEX_NAME)}

