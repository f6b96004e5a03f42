"""Progress of long work, reported by the library and drawn by the CLI.

Library functions take a `Progress` and call it; they never print. The base class does
nothing, so it is also the default. The CLI passes one that draws rich progress bars.
"""

from __future__ import annotations


class Progress:
    """Receives progress: `start` begins a bar (a later `start` begins another), `advance`
    moves the current one, `describe` says what is being done now."""

    def start(self, total: float | None, *, completed: float = 0, description: str = "") -> None:
        """A new piece of work of `total` units (None: unknown), `completed` of them already done."""

    def advance(self, amount: float = 1) -> None:
        """`amount` more units done."""

    def describe(self, description: str) -> None:
        """What is being done now (the current config, the loss, the best result so far)."""


NO_PROGRESS = Progress()
