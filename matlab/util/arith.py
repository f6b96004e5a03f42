"""A tiny arithmetic parser for widths written as `2_048 * 8` in Google's CSV.

Google's MatFormer Lab notebook calls `eval()` on these strings; this parser accepts only
integer literals (with `_` separators), `*`, `+` and parentheses, and never executes text.
Its work is bounded whatever the text: values stay within a 64-bit integer (no `9**9**9`-like
growth through long products) and parentheses nest at most MAX_DEPTH deep (no RecursionError).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(?:(\d[\d_]*)|(.))")
MAX_VALUE = 2**63 - 1  # no tensor size or layer count is larger
MAX_DEPTH = 32         # a width needs two or three levels of parentheses at most


def _quoted(text: str) -> str:
    """The expression for a message: a cell may be 100 KB long."""
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def _bounded(value: int, text: str) -> int:
    if value > MAX_VALUE:
        raise ValueError(f"{_quoted(text)} exceeds {MAX_VALUE:,}, the largest size a tensor can have")
    return value


def _tokenize(text: str) -> list[str | int]:
    tokens: list[str | int] = []
    for match in _TOKEN.finditer(text):
        number, symbol = match.groups()
        if number is not None:
            if number.endswith("_") or "__" in number:
                raise ValueError(f"malformed integer literal {_quoted(number)} in {_quoted(text)}")
            digits = number.replace("_", "")
            if len(digits) > len(str(MAX_VALUE)):  # before int(): no conversion of a 100 KB literal
                raise ValueError(f"integer literal {_quoted(number)} exceeds {MAX_VALUE:,}")
            tokens.append(_bounded(int(digits), text))
        elif symbol is not None and not symbol.isspace():
            if symbol not in "*+()":
                raise ValueError(f"unexpected character {symbol!r} in {_quoted(text)}; only integers, '*', '+' and "
                                 "parentheses are allowed")
            tokens.append(symbol)
    return tokens


def parse_int_expression(text: str) -> int:
    """Evaluate an expression of non-negative integers with `+`, `*` and parentheses."""
    tokens = _tokenize(text)
    if not tokens:
        raise ValueError("empty expression")
    position = depth = 0

    def peek() -> str | int | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str | int:
        nonlocal position
        token = peek()
        if token is None:
            raise ValueError(f"expression {_quoted(text)} ends too early")
        position += 1
        return token

    def atom() -> int:
        nonlocal depth
        token = take()
        if isinstance(token, int):
            return token
        if token == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"parentheses nested more than {MAX_DEPTH} deep in {_quoted(text)}")
            value = total()
            if take() != ")":
                raise ValueError(f"missing ')' in {_quoted(text)}")
            depth -= 1
            return value
        raise ValueError(f"unexpected {token!r} in {_quoted(text)}")

    def product() -> int:
        value = atom()
        while peek() == "*":
            take()
            value = _bounded(value * atom(), text)
        return value

    def total() -> int:
        value = product()
        while peek() == "+":
            take()
            value = _bounded(value + product(), text)
        return value

    result = total()
    if peek() is not None:
        raise ValueError(f"unexpected {peek()!r} in {_quoted(text)}")
    return result


def parse_int_list(text: str) -> list[int]:
    """Parse `[a, b, ...]` where each item is an integer expression; empty text gives []."""
    stripped = text.strip()
    if not stripped:
        return []
    if not (stripped.startswith("[") and stripped.endswith("]")):
        raise ValueError(f"expected a bracketed list, got {_quoted(text)}")
    inner = stripped[1:-1].strip()
    if not inner:
        return []
    return [parse_int_expression(item) for item in inner.split(",")]
