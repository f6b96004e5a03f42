"""What every command group shares: the consoles, one-line errors, progress bars, options.

Every piece of user text (paths, config and task names, error messages) is printed without
markup, so brackets in it are shown as typed, and with its control characters written out
(`\\x1b`), so a config name or a file name cannot send escape sequences to the terminal.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperGroup

from matlab.errors import InputError, MatformerError, MatformerWarning
from matlab.progress import Progress
from matlab.util.threads import apply_thread_policy

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A float option's callback: inf and nan parse as floats, and are refused as one line."""
    if value is not None and not math.isfinite(value):
        raise InputError(f"{param.opts[0]} {value}: must be a finite number")
    return value


CheckpointOpt = Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="Checkpoint directory or hub id.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Bundled architecture, e.g. gemma-3n-e4b.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Run this slice elastically from the full model.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1 or mps.")]
DtypeOpt = Annotated[str, typer.Option(help="float32, bfloat16, float16, or auto: float32 where the model fits in the "
                                             "device's memory, else bfloat16.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ForceOpt = Annotated[bool, typer.Option(help="Replace a non-empty --out.")]
SuiteOpt = Annotated[str, typer.Option("--suite", help="Suite YAML (evals/nano.yaml) or a bundled suite (nano).")]
BosOpt = Annotated[str, typer.Option(
    "--bos-policy", help="BOS in rolling log-likelihood (perplexity) windows: lm-eval (HFLM's default, comparable "
                         "with published numbers) or single (one BOS per window).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="Spread the work over this many Ray workers, each loading the model once "
                             "(pip install 'matformer-lab\\[distributed]').")]  # \\[: rich markup would eat the extra
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="A running Ray cluster ('auto', or host:port); without it --workers starts Ray locally.")]
GpusOpt = Annotated[Optional[float], typer.Option(
    "--gpus-per-worker", min=0, callback=finite, help="GPUs per worker (default: 1 with a CUDA --device, else 0).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads-per-worker", min=1, help="CPU threads (and Ray CPUs) per worker (default: this machine's cores shared "
                                        "out when Ray starts here, else 1).")]
ComputeThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="CPU threads torch computes with (default: torch's, one per core).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many documents per task.")]
AdapterOpt = Annotated[Optional[Path], typer.Option(
    "--adapter", help="A PEFT LoRA adapter trained on the checkpoint, merged before slices are taken (each slice is "
                      "the slice of the fine-tuned model).")]


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides that can
# make a name read as another on screen.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """User text made safe for a terminal: each control character written out as `\\xNN`."""
    return _CONTROLS.sub(lambda match: f"\\x{ord(match.group()):02x}" if ord(match.group()) < 256
                         else f"\\u{ord(match.group()):04x}", str(text))


def shown(text: object) -> str:
    """User text for a rich markup string (a table cell, a title): controls written out, brackets escaped."""
    return escape(plain(text))


def say(text: str) -> None:
    """A line of plain text on stdout (no markup: brackets are printed as typed)."""
    console.print(plain(text), markup=False, highlight=False)


def fail_line(message: str) -> None:
    errors.print(Text.assemble(("error: ", "bold red"), plain(message)), highlight=False)


def warn_line(message: str) -> None:
    errors.print(Text.assemble(("warning: ", "yellow"), plain(message)), highlight=False)


def usage_error(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line usage error and return the Exit to raise."""
    fail_line(message)
    return typer.Exit(code)


# What to do about an OSError, by its errno.
_OS_ADVICE = {errno.ENOSPC: "free some space or choose an --out on another disk",
              errno.EDQUOT: "free some space or choose an --out on another disk",
              errno.EROFS: "the filesystem is read-only: choose a writable --out",
              errno.EACCES: "check the permissions, or choose a writable --out",
              errno.EPERM: "check the permissions, or choose a writable --out",
              errno.ENOENT: "check the path",
              errno.EISDIR: "pass a file, not a directory",
              errno.ENOTDIR: "check the path: a part of it is a file"}


def os_error_line(error: OSError) -> str:
    """One line for an OSError: the file, what the system said, and what to do."""
    where = f"{error.filename}: " if error.filename else ""
    if error.filename2:
        where = f"{error.filename} -> {error.filename2}: "
    reason = error.strerror or str(error)
    advice = _OS_ADVICE.get(error.errno, "check the file and try again")
    return f"{where}{reason}; {advice} (nothing was published: an output appears only when complete)"


# The exit status of a command stopped by Ctrl-C (SIGINT): 128 + the signal's number, as shells report it.
INTERRUPTED_EXIT = 128 + signal.SIGINT


def interrupted_line(message: str) -> None:
    errors.print(Text.assemble(("interrupted: ", "bold yellow"), plain(message)), highlight=False)


@contextmanager
def reported_errors(resumes: Path | None = None) -> Iterator[None]:
    """Turn library errors and system errors (disk full, read-only, permission) into one red
    line on stderr and a non-zero exit code; and Ctrl-C into one line saying so and, for a
    command that `resumes` (its run directory), that running it again goes on where it stopped."""
    try:
        yield
    except KeyboardInterrupt:
        interrupted_line(f"what was finished is kept in {resumes}; run the same command again to resume"
                         if resumes is not None else "stopped before finishing")
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except MatformerError as error:
        fail_line(str(error))
        raise typer.Exit(error.exit_code) from None
    except OSError as error:
        fail_line(os_error_line(error))
        raise typer.Exit(1) from None
    except Exception as error:
        # A library's cleanup that fails while Ctrl-C unwinds through it (transformers'
        # no_init_weights raises UnboundLocalError when the interrupt lands inside its set-up)
        # is still the interrupt. A click exit (an inner `reported_errors` already said it was
        # interrupted) passes through: its context is that interrupt too.
        exits = (typer.Exit, click.exceptions.Exit)
        if isinstance(error, exits) or not isinstance(error.__context__, KeyboardInterrupt):
            raise
        interrupted_line(f"what was finished is kept in {resumes}; run the same command again to resume"
                         if resumes is not None else "stopped before finishing")
        raise typer.Exit(INTERRUPTED_EXIT) from None


class GuardedGroup(TyperGroup):
    """The `matformer` command group: whatever command runs, a library or system error is one
    red line and an exit code (`reported_errors`), and the library's warnings
    (MatformerWarning) are yellow lines on stderr."""

    def get_command(self, ctx, name):  # noqa: ANN001, ANN201 - click's signature
        """The command, its one-line summary in the command list made from its docstring's first
        paragraph with the source's line breaks joined (rich would keep them as ragged wraps)."""
        command = super().get_command(ctx, name)
        if command is not None and command.short_help is None and command.help:
            command.short_help = " ".join(command.help.split("\n\n")[0].split())
        return command

    def invoke(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        shown_before = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if issubclass(category, MatformerWarning):
                warn_line(str(message))
            else:
                shown_before(message, category, filename, lineno, file, line)

        with warnings.catch_warnings(), interruptible(), reported_errors():
            warnings.simplefilter("always", MatformerWarning)
            warnings.showwarning = show
            return super().invoke(ctx)


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C (SIGINT) stops the command, even when it was started in the background by a
    script: such a shell starts its background jobs with SIGINT ignored, and Python then never
    raises KeyboardInterrupt, so `kill -INT` did nothing until the run ended by itself. Every
    run directory is written so that a stop anywhere loses at most the work in progress.
    Restored afterwards (CliRunner runs commands inside the test process)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def prepare_process() -> None:
    """For the `matformer` process only (called when its command line runs, not on import),
    before any command imports torch or tqdm, which read these once:
    - the thread policy (`matlab.util.threads`): torch's threads sleep, not spin, while they wait;
    - the libraries' own tqdm bars (lm-eval's, transformers') off: they would tear through
      the rich displays, which already report the work (TQDM_DISABLE=0 keeps them)."""
    apply_thread_policy()
    os.environ.setdefault("TQDM_DISABLE", "1")


@contextmanager
def quiet_evaluation(search: bool = False) -> Iterator[None]:
    """While lm-evaluation-harness (and with `search`, optuna) runs under a rich progress
    display: only their errors logged. Restored afterwards."""
    logger = logging.getLogger("lm_eval")
    previous_level = logger.level
    logger.setLevel(logging.ERROR)
    if search:  # optuna sets its own level when first used, so it is set through optuna's API
        import optuna

        previous_verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous_level)
        if search:
            optuna.logging.set_verbosity(previous_verbosity)


class RichProgress(Progress):
    """Draws the library's progress as rich bars on stderr: bytes (size, speed, time left) or
    items (done of total, elapsed, time left). Use it as a context manager.

    When stderr is not a terminal (a log file, a pipe, CI), a live bar would show nothing until
    the end; then each piece of work and each change of description is one plain line instead,
    with a line at most every `every` seconds in between, flushed as it is written."""

    def __init__(self, unit: str = "items", every: float = 30.0) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),
                                                                                    TimeElapsedColumn())
        from rich.progress import Progress as Display

        self.unit, self.every = unit, every
        self.lines = not errors.is_terminal
        self.display = Display(TextColumn("{task.description}", markup=False), BarColumn(), *counts,
                               TimeRemainingColumn(), console=errors, transient=unit == "bytes",
                               disable=self.lines)
        self.task = None
        self._last_line = 0.0

    def start(self, total: float | None, *, completed: float = 0, description: str = "") -> None:
        self.task = self.display.add_task(description, total=total, completed=completed)
        self._last_line = time.monotonic()  # a first line after `every` seconds, or on describe

    def advance(self, amount: float = 1) -> None:
        self.display.advance(self.task, amount)
        self._line()

    def describe(self, description: str) -> None:
        self.display.update(self.task, description=description)
        self._line(force=True)

    def _line(self, force: bool = False) -> None:
        if not self.lines or self.task is None or (not force and time.monotonic() - self._last_line < self.every):
            return
        self._last_line = time.monotonic()
        task = self.display.tasks[-1]
        if self.unit == "bytes":
            done = f"{task.completed / 1e6:,.1f} of {task.total / 1e6:,.1f} MB" if task.total else \
                f"{task.completed / 1e6:,.1f} MB"
        else:
            done = f"{task.completed:g} of {task.total:g}" if task.total is not None else f"{task.completed:g}"
        left = f", about {task.time_remaining:.0f} s left" if task.time_remaining else ""
        errors.print(plain(f"{task.description}: {done} done, {task.elapsed or 0:.0f} s{left}"), markup=False,
                     highlight=False, soft_wrap=True)
        errors.file.flush()

    def __enter__(self) -> RichProgress:
        self.display.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.display.__exit__(*exc_info)


def parse_size_option(text: str, option: str) -> int:
    from matlab.util.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise usage_error(f"{option}: {error}") from None


def facts_of(checkpoint: str | None, arch: str | None):
    """(facts, directory or None) for exactly one of --checkpoint and --arch."""
    from matlab.arch.facts import facts_from_arch, facts_from_checkpoint
    from matlab.io.resolve import EMBEDDED, resolve_checkpoint

    if (checkpoint is None) == (arch is None):
        raise usage_error("give exactly one of --checkpoint or --arch")
    if arch in EMBEDDED:  # `nano` names the embedded model everywhere, --arch included: its architecture
        directory = resolve_checkpoint(arch)
        return facts_from_checkpoint(directory), directory
    if arch is not None:
        return facts_from_arch(arch), None
    directory = resolve_checkpoint(checkpoint)
    return facts_from_checkpoint(directory), directory


def pool_settings(workers: int | None, address: str | None, gpus: float | None, threads: int | None = None):
    """The Ray pool the options ask for (None: run here, serially)."""
    from matlab.distributed.pool import PoolSettings

    if workers is None:
        if address is not None or gpus is not None or threads is not None:
            raise usage_error("--ray-address, --gpus-per-worker and --threads-per-worker go with --workers N")
        return None
    return PoolSettings(workers, address, gpus, threads)


def config_paths(entries: list[str]) -> list[Path]:
    """Config files named directly, folders of them (*.yaml), or bundled sets by name
    (`nano`, `gemma-3n-e4b`); each file once, sorted."""
    from matlab.slice_config.bundled import resolve_config_entry

    return sorted({path for entry in entries for path in resolve_config_entry(entry)})


def run_dtype(checkpoint: str, dtype: str, device: str) -> str:
    """The dtype a command runs at: `dtype`, or for auto the one `choose_dtype` picks (decided
    here, so that a run's recorded identity names a dtype, not "auto")."""
    from matlab.core.memory import AUTO, choose_dtype
    from matlab.io.resolve import resolve_checkpoint

    return choose_dtype(resolve_checkpoint(checkpoint), dtype, device) if dtype == AUTO else dtype
