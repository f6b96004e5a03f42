"""The `matformer` command: each subcommand parses options, calls one library function, prints.

Commands are grouped by pipeline stage, one module each (slicing, running, evaluation,
search, runtimes, bench). Heavy imports (torch, transformers, lm_eval) happen inside the commands, so
`--help` stays instant.
"""

from __future__ import annotations

import typer

from matlab.cli import bench, evaluation, running, runtimes, search, slicing, training
from matlab.cli.common import GuardedGroup, prepare_process

app = typer.Typer(help="MatFormer Lab: slice, run, evaluate and compare Gemma 3n MatFormer submodels.",
                  no_args_is_help=True, pretty_exceptions_enable=False, callback=prepare_process,
                  cls=GuardedGroup)
slicing.register(app)
running.register(app)
evaluation.register(app)
search.register(app)
runtimes.register(app)
training.register(app)
app.add_typer(bench.bench_app, name="bench")

__all__ = ["app"]
