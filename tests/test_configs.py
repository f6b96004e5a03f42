"""Slice config YAML, the arithmetic parser and the official CSV importer."""

from __future__ import annotations

from pathlib import Path

import pytest

from matlab.errors import CsvImportError, OutputExistsError, SliceConfigError
from matlab.slice_config import dump_slice_config, load_slice_config, parse_slice_config
from matlab.slice_config.csv_import import import_official_csv, read_official_csv
from matlab.util.arith import parse_int_expression, parse_int_list

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_CSV = REPO / "slice_configs" / "gemma-3n-e4b" / "gemma3n-slicing-configs.csv"


@pytest.mark.parametrize("text, value", [("2_048 * 8", 16384), ("2_048*4", 8192), ("1 + 2 * 3", 7),
                                         ("(1 + 2) * 3", 9), (" 42 ", 42)])
def test_arithmetic_parser_accepts(text, value):
    assert parse_int_expression(text) == value


@pytest.mark.parametrize("text", ["__import__('os')", "2 ** 8", "2 - 1", "", "2 *", "(2", "2_", "1e3", "8 / 2"])
def test_arithmetic_parser_rejects(text):
    with pytest.raises(ValueError):
        parse_int_expression(text)


def test_int_list():
    assert parse_int_list("[2_048 * 4, 16]") == [8192, 16]
    assert parse_int_list("") == [] and parse_int_list("[]") == []
    with pytest.raises(ValueError, match="bracketed"):
        parse_int_list("1, 2")


def test_yaml_round_trip_and_compact_runs(tmp_path):
    config = parse_slice_config({"name": "x", "layers_skipped": [3, 1], "ffn_widths": [
        {"width": 8, "count": 3}, 16, 16, 8]}, "inline")
    assert config.layers_skipped == (1, 3) and config.ffn_widths == (8, 8, 8, 16, 16, 8)
    text = dump_slice_config(config)
    assert "{width: 8, count: 3}" in text and "{width: 16, count: 2}" in text
    (tmp_path / "x.yaml").write_text(text)
    assert load_slice_config(tmp_path / "x.yaml") == config
    assert parse_slice_config({"name": "y", "ffn_widths": 8}, "inline").widths_for(4) == (8, 8, 8, 8)


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "layers_skipped": [2, 2], "ffn_widths": 8}, r"layers_skipped: layer\(s\) \[2\] listed more than once"),
    ({"name": "x", "layers_skipped": [-1], "ffn_widths": 8}, "layers_skipped: layer index.* negative"),
    ({"name": "x", "ffn_widths": [8, 0, -4]}, r"ffn_widths: FFN widths must be positive \(kept layer 1: 0; kept layer 2: -4\)"),
    ({"name": "x", "ffn_widths": [{"width": 8}]}, "entry 0 is not a {width, count} run"),
    ({"name": "x", "ffn_widths": 8, "skip": [1]}, "skip: Extra inputs are not permitted"),
    ({"ffn_widths": 8}, "name: Field required"),
])
def test_bad_config_fields_are_named(data, message):
    with pytest.raises(SliceConfigError, match=message):
        parse_slice_config(data, "bad.yaml")


def test_unreadable_yaml_is_named(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SliceConfigError, match="bad.yaml: not valid YAML"):
        load_slice_config(tmp_path / "bad.yaml")


def test_official_csv_imports_every_row():
    configs = dict(read_official_csv(OFFICIAL_CSV, "gemma-3n-e4b"))
    assert len(configs) == 16
    e2b = configs["e2b"]
    assert e2b.layers_skipped == (20, 21, 22, 23, 24) and e2b.ffn_widths == (8192,) * 30
    assert e2b.reference.effective_params_b == 1.91 and e2b.reference.mmlu_pt_accuracy == 0.509
    assert configs["e3.79b-block-level"].reference.effective_params_b == 3.74
    assert configs["e2.98b-layer-level"].ffn_widths[15:25] == (16384,) * 10


def test_committed_official_configs_are_the_importer_output():
    committed = REPO / "slice_configs" / "gemma-3n-e4b"
    configs = read_official_csv(OFFICIAL_CSV, "gemma-3n-e4b")
    assert sorted(p.stem for p in committed.glob("*.yaml")) == sorted(stem for stem, _ in configs)
    for stem, config in configs:
        assert (committed / f"{stem}.yaml").read_text() == dump_slice_config(config)


def test_import_refuses_to_overwrite_and_bad_rows_write_nothing(tmp_path):
    import_official_csv(OFFICIAL_CSV, tmp_path / "a")
    with pytest.raises(OutputExistsError, match="already exist; pass --force"):
        import_official_csv(OFFICIAL_CSV, tmp_path / "a")
    bad = tmp_path / "bad.csv"
    lines = OFFICIAL_CSV.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], lines[2].replace("2_048 * 4", "__import__('os')", 1)]) + "\n")
    with pytest.raises(CsvImportError, match=r"line 3 .*'FFN Hidden Dims'.*unexpected character"):
        import_official_csv(bad, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    short = tmp_path / "short.csv"
    short.write_text("\n".join([lines[0], lines[1].replace("Main model,35", "Main model,34")]) + "\n")
    with pytest.raises(CsvImportError, match="has 35 entries but '# Layers' says 34"):
        read_official_csv(short)
