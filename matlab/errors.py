"""Typed errors raised by the library; the CLI turns them into one line and an exit code."""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxlist = _SHORT.maxdict = 4
_SHORT.maxlevel = 2


def shown_value(value: Any) -> str:
    """A value read from a file as a short one-line repr, for an error message: a corrupt or
    hostile field may hold megabytes."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an integer too long for str()
        return "a number too long to show"


class MatformerError(Exception):
    """Base class of every error the workbench raises on bad input."""

    exit_code = 1


class SliceConfigError(MatformerError):
    """A slice config file cannot be read or does not fit the target architecture."""


class CheckpointError(MatformerError):
    """A checkpoint is missing, unreadable or inconsistent with its config.json."""


class OutputExistsError(MatformerError):
    """The output directory exists and is not empty; pass --force to replace it."""

    exit_code = 2


class CsvImportError(MatformerError):
    """A row of an official slicing-configs CSV cannot be converted."""


class InputError(MatformerError):
    """A text, prompt or option value the core cannot work with."""

    exit_code = 2


class MatformerWarning(UserWarning):
    """Something the user should know that stops no work (shown by the CLI as one yellow line)."""


class FormatError(MatformerError, ValueError):
    """A weight format is unknown, or a tensor's rows are not whole blocks of it."""


class DivergedError(MatformerError):
    """A training step's loss or weights stopped being finite numbers."""


class NonFiniteError(MatformerError):
    """A model computed logits that are not finite numbers (NaN or inf): nothing is scored from them."""
