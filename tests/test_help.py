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
