"""What `--help` shows: extras written as typed, one summary line per command."""

from __future__ import annotations

from typer.testing import CliRunner

from matlab.cli import app

runner = CliRunner()


def test_help_keeps_the_extra_in_brackets():
    for command in ("sweep", "search"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0
        assert "pip install 'matformer-lab[distributed]'" in result.output, command


def test_command_list_joins_docstring_lines():
    for group in ([], ["bench"]):
        result = runner.invoke(app, [*group, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0
        rows = [line for line in result.output.splitlines() if line.startswith("│ ")]
        # At 250 columns every summary fits on its own row: no row is a continuation of a ragged wrap.
        continuations = [row for row in rows if row[2:3] == " " and row.strip("│ ")]
        assert rows and not continuations, continuations


def test_progress_written_as_lines_when_stderr_is_not_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    from matlab.cli import common

    stream = io.StringIO()
    monkeypatch.setattr(common, "errors", Console(file=stream, force_terminal=False, width=200))
    with common.RichProgress(every=0) as progress:
        progress.start(3, description="sweeping")
        progress.advance()
        progress.describe("nano-E2B")
        progress.advance(2)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sweeping: 1 of 3 done") and lines[-1].startswith("nano-E2B: 3 of 3 done")
    assert "\x1b" not in stream.getvalue()


def test_arch_nano_names_the_embedded_model():
    by_arch = runner.invoke(app, ["params", "--arch", "nano", "--json"])
    by_checkpoint = runner.invoke(app, ["params", "--checkpoint", "nano", "--json"])
    assert by_arch.exit_code == 0, by_arch.output
    import json

    assert json.loads(by_arch.output)["effective_params"] == json.loads(by_checkpoint.output)["effective_params"]
