"""Sizes typed by users: bytes (`5GB`, `2.5GiB`) and counts (`2.5B`, `900M`, `2_000_000`)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_COUNT = re.compile(r"^\s*(\d[\d_]*(?:\.\d+)?)\s*([KMBT]?)\s*$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """Bytes in a size such as `5GB`, `500MB` or `2GiB`."""
    match = _SIZE.match(text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_count(text: str) -> int:
    """A count such as `2.5B`, `900M` or `2_000_000`."""
    match = _COUNT.match(text)
    if not match:
        raise ValueError(f"cannot read count {text!r}; write it like 2.5B, 900M or 2_000_000")
    number, unit = match.group(1).replace("_", ""), match.group(2).upper()
    return int(round(float(number) * _MULTIPLIERS[unit]))


def short_count(count: int) -> str:
    """A count as `parse_count` reads it, to two decimals: 2.16M, 1.91B."""
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"
