"""The CLI: thin commands, one red line and a non-zero exit on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from matlab.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
E2B = REPO / "slice_configs" / "gemma-3n-e4b" / "e2b.yaml"


def test_params_json_for_e2b():
    result = runner.invoke(app, ["params", "--arch", "gemma-3n-e4b", "--config", str(E2B), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["effective_params"] == 1_905_495_648 and payload["text_params"] == 4_456_156_768
    assert payload["stated_effective_params_b"] == 1.91 and payload["total_params"] > payload["text_params"]


def test_params_table_shows_stated_beside_exact():
    result = runner.invoke(app, ["params", "--arch", "gemma-3n-e4b", "--config", str(E2B)])
    assert result.exit_code == 0 and "1,905,495,648" in result.stdout and "1.91B" in result.stdout


def test_validate_reports_every_file_and_exits_1(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nlayers_skipped: [18]\nffn_widths: 8192\n")
    (tmp_path / "b.yaml").write_text("name: b\nffn_widths: [8192]\n")
    (tmp_path / "c.yaml").write_text("name: c\nffn_widths: [{width: 7, count: 0}]\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"),
                                 str(tmp_path / "c.yaml"), str(E2B), "--arch", "gemma-3n-e4b"])
    assert result.exit_code == 1
    assert "a.yaml: layers_skipped (layer 18): layer 18 is the KV producer" in result.stderr
    assert "b.yaml: ffn_widths: 1 widths for 35 kept layers" in result.stderr
    assert "c.yaml: file:" in result.stderr and "3 of 4 config(s) invalid" in result.stderr
    assert "ok" in result.stdout and "e2b.yaml" in result.stdout


def test_validate_needs_exactly_one_target():
    result = runner.invoke(app, ["validate", str(E2B)])
    assert result.exit_code == 2 and "exactly one of --checkpoint or --arch" in result.stderr


def test_slice_cli_writes_and_refuses(tiny_text, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: half\nffn_widths: 128\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "15 layers" in result.stdout and (out / "config.json").exists()
    assert "matformer slice" in (out / "README.md").read_text()
    again = runner.invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out", str(out)])
    assert again.exit_code == 2 and "not empty; pass --force" in again.stderr
    assert "Traceback" not in again.output


def test_slice_cli_bad_config_and_offline_hub(tiny_text, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: bad\nffn_widths: 999\n")
    result = runner.invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "width 999 exceeds the base width 256" in result.stderr
    assert not (tmp_path / "o").exists()
    bad_size = runner.invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out", str(tmp_path / "o"),
                                   "--max-shard-size", "lots"])
    assert bad_size.exit_code == 2 and "--max-shard-size" in bad_size.stderr
    hub = runner.invoke(app, ["params", "--checkpoint", "no-such-org/no-such-model"])
    assert hub.exit_code == 1 and "pass its local directory" in hub.stderr


def test_configs_import_cli(tmp_path):
    csv_path = REPO / "slice_configs" / "gemma-3n-e4b" / "gemma3n-slicing-configs.csv"
    result = runner.invoke(app, ["configs", "import", str(csv_path), "--out", str(tmp_path), "--base", "gemma-3n-e4b"])
    assert result.exit_code == 0 and len(list(tmp_path.glob("*.yaml"))) == 16
