"""A tiny arithmetic parser for widths written as `2_048 * 8` in Google's CSV.

Google's MatFormer Lab notebook calls `eval()` on these strings; this parser accepts only
integer literals (with `_` separators), `*`, `+` and parentheses, and never executes text.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(?:(\d[\d_]*)|(.))")


def _tokenize(text: str) -> list[str | int]:
    tokens: list[str | int] = []
    for match in _TOKEN.finditer(text):
        number, symbol = match.groups()
        if number is not None:
            if number.endswith("_") or "__" in number:
                raise ValueError(f"malformed integer literal {number!r} in {text!r}")
            tokens.append(int(number.replace("_", "")))
        elif symbol is not None and not symbol.isspace():
            if symbol not in "*+()":
                raise ValueError(f"unexpected character {symbol!r} in {text!r}; only integers, '*', '+' and "
                                 "parentheses are allowed")
            tokens.append(symbol)
    return tokens


def parse_int_expression(text: str) -> int:
    """Evaluate an expression of non-negative integers with `+`, `*` and parentheses."""
    tokens = _tokenize(text)
    if not tokens:
        raise ValueError("empty expression")
    position = 0

    def peek() -> str | int | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str | int:
        nonlocal position
        token = peek()
        if token is None:
            raise ValueError(f"expression {text!r} ends too early")
        position += 1
        return token

    def atom() -> int:
        token = take()
        if isinstance(token, int):
            return token
        if token == "(":
            value = total()
            if take() != ")":
                raise ValueError(f"missing ')' in {text!r}")
            return value
        raise ValueError(f"unexpected {token!r} in {text!r}")

    def product() -> int:
        value = atom()
        while peek() == "*":
            take()
            value *= atom()
        return value

    def total() -> int:
        value = product()
        while peek() == "+":
            take()
            value += product()
        return value

    result = total()
    if peek() is not None:
        raise ValueError(f"unexpected {peek()!r} in {text!r}")
    return result


def parse_int_list(text: str) -> list[int]:
    """Parse `[a, b, ...]` where each item is an integer expression; empty text gives []."""
    stripped = text.strip()
    if not stripped:
        return []
    if not (stripped.startswith("[") and stripped.endswith("]")):
        raise ValueError(f"expected a bracketed list, got {text!r}")
    inner = stripped[1:-1].strip()
    if not inner:
        return []
    return [parse_int_expression(item) for item in inner.split(",")]
