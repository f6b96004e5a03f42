"""Hostile inputs: corrupt config.json files, slice config YAML and official CSVs each end in
one typed error line naming the file, the field (or line and column) and what to do, in
bounded time and memory, with nothing written."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from matlab.arch.facts import facts_from_arch, facts_from_checkpoint
from matlab.cli import app
from matlab.errors import CheckpointError, CsvImportError, SliceConfigError
from matlab.slice_config import SliceConfig, load_slice_config, parse_slice_config
from matlab.slice_config.csv_import import import_official_csv, read_official_csv
from matlab.slice_config.validation import check_slice_config

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_CSV = REPO / "slice_configs" / "gemma-3n-e4b" / "gemma3n-slicing-configs.csv"
E2B_YAML = REPO / "slice_configs" / "gemma-3n-e4b" / "e2b.yaml"
runner = CliRunner()


def one_line(message: str, limit: int = 600) -> str:
    assert "\n" not in message.strip() and len(message) < limit, message
    return message


def assert_one_line_failure(args: list[str]) -> str:
    """The CLI exits non-zero with one error line and no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


# -- config.json ---------------------------------------------------------------------------

def _set(key: str, value: Any) -> Callable[[dict], None]:
    return lambda config: config.__setitem__(key, value)


def _drop(*keys: str) -> Callable[[dict], None]:
    return lambda config: [config.pop(key) for key in keys]


def _first_layer_type(value: Any) -> Callable[[dict], None]:
    return lambda config: config["layer_types"].__setitem__(0, value)


def _derived(patch: Callable[[dict], None]) -> Callable[[dict], None]:
    """Leave out the per-layer lists, so transformers' config class fills them in after `patch`."""
    def apply(config: dict) -> None:
        _drop("layer_types", "activation_sparsity_pattern")(config)
        patch(config)
    return apply


CONFIG_CASES = {
    "layers-text": (_set("num_hidden_layers", "abc"), r"num_hidden_layers is 'abc', not an integer from 1"),
    "layers-null": (_set("num_hidden_layers", None), "num_hidden_layers is None, not an integer"),
    "layers-missing": (_drop("num_hidden_layers"), "num_hidden_layers is missing"),
    "layers-zero": (_set("num_hidden_layers", 0), "num_hidden_layers is 0, not an integer from 1"),
    "layers-bool": (_set("num_hidden_layers", True), "num_hidden_layers is True"),
    "layer-types-number": (_set("layer_types", 5), "layer_types is 5, not a list of one entry per layer"),
    "layer-types-short": (lambda c: c.__setitem__("layer_types", c["layer_types"][:3]),
                          "layer_types has 3 entries but num_hidden_layers is 15"),
    "layer-type-unknown": (_first_layer_type("foo"), r"layer_types\[0\] is 'foo', not one of sliding_attention"),
    "layer-type-number": (_first_layer_type(1), r"layer_types\[0\] is 1"),
    "ffn-fraction": (_set("intermediate_size", [1.5]), r"intermediate_size\[0\] is 1.5, not a positive integer"),
    "ffn-zero": (_set("intermediate_size", [0] * 15), r"intermediate_size\[0\] is 0, not a positive integer"),
    "ffn-long": (_set("intermediate_size", [256] * 16), "intermediate_size has 16 entries but num_hidden_layers is 15"),
    "ffn-text": (_set("intermediate_size", "x"), "intermediate_size is 'x', not a positive integer"),
    "ffn-missing": (_drop("intermediate_size"), "intermediate_size is missing"),
    "kv-shared-too-many": (_set("num_kv_shared_layers", 99), "num_kv_shared_layers is 99, not an integer from 0 to 14"),
    "kv-shared-negative": (_set("num_kv_shared_layers", -1), "num_kv_shared_layers is -1, not an integer from 0 to 14"),
    "kv-shared-null": (_set("num_kv_shared_layers", None), "num_kv_shared_layers is None"),
    "kv-shared-orphans": (_set("num_kv_shared_layers", 14),
                          "num_kv_shared_layers is 14, but no full_attention layer comes before the last 14 layers"),
    "block-missing": (_drop("hidden_size_per_layer_input"), "hidden_size_per_layer_input is missing"),
    "block-null": (_set("hidden_size_per_layer_input", None), "hidden_size_per_layer_input is None"),
    "head-dim-float": (_set("head_dim", 16.0), "head_dim is 16.0, not a positive integer"),
    "sparsity-text": (lambda c: c["activation_sparsity_pattern"].__setitem__(0, "x"),
                      r"activation_sparsity_pattern\[0\] is 'x', not a sparsity"),
    "sparsity-one": (lambda c: c["activation_sparsity_pattern"].__setitem__(0, 1.0),
                     r"activation_sparsity_pattern\[0\] is 1.0"),
    "model-type-missing": (_drop("model_type"), "model_type is missing; MatFormer Lab handles model types"),
    # Without the per-layer lists the fields stated are checked before transformers builds any.
    "derived-layers-huge": (_derived(_set("num_hidden_layers", 10**9)),
                            "num_hidden_layers is 1000000000, not an integer from 1 to 100,000"),
    "derived-layer-types-number": (_derived(_set("layer_types", 5)), "layer_types is 5, not a list"),
    "derived-kv-shared-too-many": (_derived(_set("num_kv_shared_layers", 40)), "num_kv_shared_layers is 40"),
    "derived-transformers-rejects": (_derived(_set("sliding_window", "abc")),
                                     "the text config is not a valid Gemma 3n config .*sliding_window"),
}


@pytest.fixture()
def checkpoint_with(tiny_text, tmp_path) -> Callable[..., Path]:
    """A checkpoint directory holding the tiny text checkpoint's config.json, changed by
    `patch`, or holding `raw` bytes as its config.json."""
    def write(patch: Callable[[dict], None] | None = None, raw: bytes | None = None,
              multimodal: bool = False) -> Path:
        directory = tmp_path / "ckpt"
        directory.mkdir(exist_ok=True)
        if raw is None:
            config = json.loads((tiny_text / "config.json").read_text())
            if patch:
                patch(config)
            if multimodal:
                config = {"model_type": "gemma3n", "text_config": config}
            raw = json.dumps(config).encode()
        (directory / "config.json").write_bytes(raw)
        return directory
    return write


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_corrupt_config_json_field_is_named(checkpoint_with, case):
    patch, expected = CONFIG_CASES[case]
    directory = checkpoint_with(patch)
    with pytest.raises(CheckpointError, match=expected) as caught:
        facts_from_checkpoint(directory)
    message = one_line(str(caught.value))
    assert message.startswith(f"{directory / 'config.json'}: "), message
    if not case.startswith("model-type"):
        assert message.endswith("fix or re-download config.json"), message


def test_multimodal_text_config_fields_are_named_with_their_prefix(checkpoint_with):
    directory = checkpoint_with(_set("num_hidden_layers", "abc"), multimodal=True)
    with pytest.raises(CheckpointError, match=r"config\.json: text_config\.num_hidden_layers is 'abc', not an integer"):
        facts_from_checkpoint(directory)
    directory = checkpoint_with(raw=json.dumps({"model_type": "gemma3n", "text_config": [1]}).encode())
    with pytest.raises(CheckpointError, match=r"text_config is \[1\], not an object; fix or re-download"):
        facts_from_checkpoint(directory)


@pytest.mark.parametrize("raw, expected", [
    (b"null", "holds null, not a JSON object"),
    (b"[1, 2]", "holds a JSON list, not a JSON object"),
    (b'"config"', "holds a JSON string, not a JSON object"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff", r"not UTF-8 text \(byte 0 is 0x89\)"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"num_hidden_layers": ' + b"9" * 5000 + b"}", "holds an integer thousands of digits long"),
    (b'{"model_type": "' + b"x" * (17 << 20) + b'"}', "larger than 16 MiB"),
    (b'{"model_type": ', "not valid JSON"),
])
def test_config_json_that_is_no_json_object_is_named(checkpoint_with, raw, expected):
    directory = checkpoint_with(raw=raw)
    with pytest.raises(CheckpointError, match=expected) as caught:
        facts_from_checkpoint(directory)
    assert one_line(str(caught.value)).startswith(f"{directory / 'config.json'}: ")


def test_config_json_that_is_a_directory_is_named(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json: cannot read"):
        facts_from_checkpoint(tmp_path)


def test_a_long_value_is_shown_short(checkpoint_with):
    directory = checkpoint_with(_set("layer_types", "x" * 1_000_000))
    with pytest.raises(CheckpointError, match="layer_types is 'xxx") as caught:
        facts_from_checkpoint(directory)
    one_line(str(caught.value), limit=400)


@pytest.mark.parametrize("case", ["layers-text", "layer-types-number", "kv-shared-too-many", "ffn-fraction"])
def test_cli_reports_a_corrupt_config_json_in_one_line(checkpoint_with, case):
    directory = checkpoint_with(CONFIG_CASES[case][0])
    for args in (["params", "--checkpoint", str(directory)], ["validate", str(E2B_YAML), "--checkpoint", str(directory)]):
        output = assert_one_line_failure(args)
        assert "config.json" in output and "re-download" in output


@pytest.mark.parametrize("raw", [b"null", b"\xff\xfe\x00garbage", b"[" * 100_000])
def test_cli_reports_an_unparsable_config_json_in_one_line(checkpoint_with, raw):
    directory = checkpoint_with(raw=raw)
    assert "config.json" in assert_one_line_failure(["params", "--checkpoint", str(directory)])


# -- slice config YAML ---------------------------------------------------------------------

def _yaml_file(tmp_path: Path, content: str | bytes, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content, expected", [
    (b"name: x\nffn_widths: 8\n\x89PNG\x00\xff", "not UTF-8 text (byte 22 is 0x89)"),
    ("name: x\nffn_widths: " + "[" * 10_000 + "]" * 10_000, "nested too deeply"),
    ("name: x\nffn_widths: 8\ndescription: " + "a" * (2 << 20), "larger than 1,024 KiB"),
    ("name: x\nffn_widths: " + "9" * 5000, "an integer thousands of digits long"),
    ("name: [unclosed", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 1, column 16)"),
    ("name: x\nffn_widths: 8\nnotes: \x01", "not valid YAML (unacceptable character"),
])
def test_unreadable_slice_config_files_are_named(tmp_path, content, expected):
    path = _yaml_file(tmp_path, content)
    with pytest.raises(SliceConfigError) as caught:
        load_slice_config(path)
    message = one_line(str(caught.value))
    assert message.startswith(f"{path}: ") and expected in message, message


@pytest.mark.parametrize("widths, expected", [
    (256.5, "ffn_widths: 256.5 is not a whole number"),
    ([256.5, 256], "ffn_widths: entry 0 is 256.5, not a whole number"),
    ([256, "256"], "ffn_widths: entry 1 is '256', not a whole number"),
    ([True], "ffn_widths: entry 0 is True, not a whole number"),
    ([{"width": 256.5, "count": 2}], "entry 0 is not a {width, count} run: width: 256.5 is not a whole number"),
    ([{"width": 256, "count": 2.5}], "entry 0 is not a {width, count} run: count: 2.5 is not a whole number"),
    ([{"width": 256, "count": "1e12"}], "entry 0 is not a {width, count} run: count: '1e12' is not a whole number"),
])
def test_fractional_and_textual_widths_are_refused(widths, expected):
    with pytest.raises(SliceConfigError) as caught:
        parse_slice_config({"name": "x", "ffn_widths": widths}, "bad.yaml")
    assert expected in one_line(str(caught.value)), caught.value


def test_integral_float_widths_are_whole_numbers():
    config = parse_slice_config({"name": "x", "layers_skipped": [3.0], "ffn_widths": [256.0, {"width": 8, "count": 2.0}]},
                                "ok.yaml")
    assert config.ffn_widths == (256, 8, 8) and config.layers_skipped == (3,)
    assert all(type(width) is int for width in config.ffn_widths)


@pytest.mark.parametrize("count, shown", [(100_000_000, "100,000,000"), (10**12, "1,000,000,000,000"),
                                          (10**300, "over 10**15")])
def test_huge_run_counts_are_refused_before_expansion(count, shown):
    tracemalloc.start()
    try:
        with pytest.raises(SliceConfigError) as caught:
            parse_slice_config({"name": "x", "ffn_widths": [{"width": 256, "count": count}]}, "bad.yaml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = one_line(str(caught.value))
    assert f"brings the widths to {shown} kept layers; no model has more than 100,000" in message
    assert peak < 5 * 2**20, peak  # nothing of the count's size was built (100M widths took 2.4 GB)


def test_runs_adding_up_past_the_cap_are_refused_at_the_entry_that_crosses_it():
    widths = [{"width": 8, "count": 60_000}, 16, {"width": 8, "count": 50_000}]
    with pytest.raises(SliceConfigError, match="entry 2 .* brings the widths to 110,001 kept layers"):
        parse_slice_config({"name": "x", "ffn_widths": widths}, "bad.yaml")


def test_huge_yaml_count_is_refused_from_the_file(tmp_path):
    path = _yaml_file(tmp_path, "name: x\nffn_widths:\n  - {width: 256, count: 100000000}\n")
    with pytest.raises(SliceConfigError, match="100,000,000 kept layers"):
        load_slice_config(path)


@pytest.mark.parametrize("field, value, expected", [
    ("ffn_widths", [8] * 200_000, "ffn_widths: lists 200,000 widths; no model has more than 100,000 layers"),
    ("layers_skipped", list(range(200_000)), "layers_skipped: lists 200,000 layers; no model has more than 100,000"),
])
def test_overlong_lists_are_refused(field, value, expected):
    data = {"name": "x", "ffn_widths": 8, field: value}
    with pytest.raises(SliceConfigError, match=expected):
        parse_slice_config(data, "bad.yaml")


def _best_time(call: Callable[[], Any], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def test_duplicate_check_of_many_skipped_layers_is_linear():
    def check(count: int) -> Callable[[], Any]:
        skips = [*range(count), 0]  # one repeat at the end: every entry is looked at
        def call() -> None:
            with pytest.raises(SliceConfigError, match=r"layer\(s\) \[0\] listed more than once"):
                parse_slice_config({"name": "x", "layers_skipped": skips, "ffn_widths": 8}, "bad.yaml")
        return call
    small, large = _best_time(check(2_000)), _best_time(check(20_000))
    assert large < 40 * small + 0.05, (small, large)  # ten times the entries: ~10x linear, ~100x quadratic


@pytest.mark.parametrize("data, expected", [
    ({"name": "x", "layers_skipped": ["a"] * 10_000, "ffn_widths": 8},
     "layers_skipped.0, layers_skipped.1, layers_skipped.2, layers_skipped.3, layers_skipped.4 and 9,995 more: "
     "'a' is not a whole number"),
    ({"name": "x", "layers_skipped": [-1, *range(-10_000, -1)], "ffn_widths": 8},
     "layer index(es) [-1, -10000, -9999, -9998, -9997 and 9,995 more] are negative"),
    ({"name": "x", "layers_skipped": [*range(10_000), *range(10_000)], "ffn_widths": 8},
     "layer(s) [0, 1, 2, 3, 4 and 9,995 more] listed more than once"),
    ({"name": "x", "ffn_widths": [0] * 10_000},
     "FFN widths must be positive (kept layer 0: 0; kept layer 1: 0; kept layer 2: 0; kept layer 3: 0; "
     "kept layer 4: 0 and 9,995 more)"),
    ({"name": "x", "ffn_widths": ["a"] * 10_000}, "entry 0, entry 1, entry 2, entry 3, entry 4 and 9,995 more is 'a'"),
    ({"name": "x", "ffn_widths": [str(i) for i in range(10_000)]},
     "entry 4 is '4', not a whole number; and 9,995 more problem(s)"),
    ({"name": "x", "layers_skipped": [f"s{i}" for i in range(10_000)], "ffn_widths": 8},
     "layers_skipped.4: 's4' is not a whole number; and 9,995 more problem(s)"),
])
def test_many_bad_entries_make_one_short_line(data, expected):
    with pytest.raises(SliceConfigError) as caught:
        parse_slice_config(data, "bad.yaml")
    message = one_line(str(caught.value), limit=1000)
    assert expected in message, message


@pytest.mark.parametrize("content", [
    b"name: x\nffn_widths: 8\n\x89\xff",
    "name: x\nffn_widths: " + "[" * 10_000 + "]" * 10_000,
    "name: x\nffn_widths:\n  - {width: 256, count: 100000000}\n",
    "name: x\nffn_widths: 256.5\n",
    "name: x\nlayers_skipped: [" + ", ".join(["a"] * 10_000) + "]\nffn_widths: 8\n",
    "name: x\nffn_widths: 8\ndescription: " + "a" * (2 << 20),
])
def test_cli_reports_a_bad_slice_config_in_one_line(tmp_path, content):
    path = _yaml_file(tmp_path, content)
    output = assert_one_line_failure(["params", "--arch", "gemma-3n-e4b", "--config", str(path)])
    assert str(path.name) in output and len(output) < 1000
    result = runner.invoke(app, ["validate", str(path), "--arch", "gemma-3n-e4b"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 2, result.output  # the problem and the summary


# -- validation against an architecture -----------------------------------------------------

@pytest.fixture(scope="module")
def e4b():
    return facts_from_arch("gemma-3n-e4b")


def test_many_out_of_range_skips_are_one_problem(e4b):
    config = SliceConfig(name="bad", layers_skipped=range(35, 10_035), ffn_widths=8192)
    problems = check_slice_config(config, e4b, "c.yaml")
    assert [str(problem) for problem in problems] == [
        "c.yaml: layers_skipped (layers 35, 36, 37, 38, 39 and 9,995 more): out of range; "
        "gemma-3n-e4b has layers 0..34"]


def test_many_bad_widths_are_one_problem_each_kind(e4b):
    too_wide = check_slice_config(SliceConfig(name="bad", ffn_widths=20000), e4b, "c.yaml")
    assert [str(problem) for problem in too_wide] == [
        "c.yaml: ffn_widths (layers 0, 1, 2, 3, 4 and 30 more): 35 kept layers, first layer 0: width 20000 exceeds "
        "the base width 16384; use at most 16384"]
    untrained = check_slice_config(SliceConfig(name="odd", ffn_widths=6144), e4b, "c.yaml")
    assert len(untrained) == 1 and untrained[0].severity == "warning"
    assert "35 kept layers, first layer 0: width 6144 was never trained" in str(untrained[0])


def test_cli_validate_reports_many_out_of_range_skips_briefly(tmp_path):
    path = _yaml_file(tmp_path, f"name: x\nlayers_skipped: {list(range(35, 10_035))}\nffn_widths: 8192\n")
    result = runner.invoke(app, ["validate", str(path), "--arch", "gemma-3n-e4b"])
    assert result.exit_code == 1 and "and 9,995 more" in result.output
    assert len(result.output.strip().splitlines()) == 2, result.output
    output = assert_one_line_failure(["params", "--arch", "gemma-3n-e4b", "--config", str(path)])
    assert "out of range" in output and len(output) < 1000


# -- official CSV --------------------------------------------------------------------------

HEADER, MAIN_ROW = OFFICIAL_CSV.read_text().splitlines()[:2]
ONE_LAYER = 'Tiny,1,0.1,50%,"[2_048 * 8]",'


def _csv_file(tmp_path: Path, *rows: str | bytes, header: str = HEADER) -> Path:
    path = tmp_path / "bad.csv"
    lines = [line if isinstance(line, bytes) else line.encode() for line in (header, *rows)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


CSV_CASES = {
    "short-row": (["Main model,35"], "line 2 ('Main model'): column '# Effective Params (B)' is missing"),
    "layers-text": (['Tiny,abc,0.1,50%,"[2_048 * 8]",'], "line 2 ('Tiny'): column '# Layers': unexpected character 'a'"),
    "params-text": (['Tiny,1,abc,50%,"[2_048 * 8]",'], "column '# Effective Params (B)': 'abc' is not a number"),
    "params-nan": (['Tiny,1,nan,50%,"[2_048 * 8]",'], "column '# Effective Params (B)': 'nan' is not a number"),
    "accuracy-text": (['Tiny,1,0.1,high,"[2_048 * 8]",'], "column 'MMLU PT accuracy': 'high' is not a number or"),
    "widths-unquoted": (["Tiny,2,0.1,50%,[8, 8],"], "the row has 7 cells but the header 6; quote cells"),
    "cell-too-long": ([f'Tiny,1,0.1,50%,"[{"1" * 200_000}]",'], "line 2: a cell is longer than 131,072 characters"),
    "literal-too-long": ([f'Tiny,{"9" * 5000},0.1,50%,"[8]",'], "column '# Layers': integer literal '99999"),
    "product-too-large": ([f'Tiny,1,0.1,50%,"[{" * ".join(["9999999999"] * 1000)}]",'],
                          "column 'FFN Hidden Dims': '9999999999 * 9999999999"),
    "nested-too-deep": ([f'Tiny,1,0.1,50%,"[{"(" * 5000}8{")" * 5000}]",'],
                        "column 'FFN Hidden Dims': parentheses nested more than 32 deep"),
    "binary": ([b"Tiny,1,0.1,50%,\xff\xfe\x00,"], r"not UTF-8 text (byte"),
    "count-mismatch": (['Tiny,100000000,0.1,50%,"[8]",'], "'FFN Hidden Dims' has 1 entries but '# Layers' says 100000000"),
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_rows_are_named_by_line_and_column(tmp_path, case):
    rows, expected = CSV_CASES[case]
    path = _csv_file(tmp_path, ONE_LAYER, *rows)
    with pytest.raises(CsvImportError) as caught:
        import_official_csv(path, tmp_path / "out")
    message = one_line(str(caught.value))
    assert message.startswith(str(path)) and expected.replace("line 2", "line 3") in message, message
    assert not (tmp_path / "out").exists()


def test_huge_csv_file_is_refused_before_parsing(tmp_path):
    path = _csv_file(tmp_path, *[ONE_LAYER] * 200_000)  # 5.6 MB
    with pytest.raises(CsvImportError, match="larger than 4 MiB"):
        read_official_csv(path)


def test_missing_header_column_is_named(tmp_path):
    path = _csv_file(tmp_path, ONE_LAYER, header=HEADER.replace(",Layers Skipped", ""))
    with pytest.raises(CsvImportError, match=r"missing column\(s\) \['Layers Skipped'\]"):
        read_official_csv(path)


def test_many_rows_of_one_name_get_short_distinct_file_names(tmp_path):
    path = _csv_file(tmp_path, *[ONE_LAYER] * 300, 'Tiny 2,1,0.1,50%,"[8]",', f'{"E" * 1000},1,0.1,50%,"[8]",')
    written = import_official_csv(path, tmp_path / "out")
    names = [target.name for target in written]
    assert len(set(names)) == len(names) == 302 and max(map(len, names)) <= 110
    assert names[:3] == ["tiny.yaml", "tiny-2.yaml", "tiny-3.yaml"] and names[300] == "tiny-2-2.yaml"


@pytest.mark.parametrize("case", ["short-row", "cell-too-long", "nested-too-deep", "binary", "product-too-large"])
def test_cli_import_of_a_bad_csv_is_one_line_and_writes_nothing(tmp_path, case):
    path = _csv_file(tmp_path, ONE_LAYER, *CSV_CASES[case][0])
    out = tmp_path / "out"
    output = assert_one_line_failure(["configs", "import", str(path), "--out", str(out)])
    assert "bad.csv" in output and not out.exists()


def test_a_failed_write_replaces_no_existing_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    written = import_official_csv(OFFICIAL_CSV, out)
    before = {path.name: path.read_bytes() for path in written}
    calls = {"count": 0}
    original = Path.write_text

    def fail_on_third(self, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise OSError(28, "No space left on device", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_on_third)
    with pytest.raises(CsvImportError, match="cannot write .No space left on device"):
        import_official_csv(OFFICIAL_CSV, out, base="gemma-3n-e4b", force=True)  # other content than before
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no temporaries left either
    fresh = tmp_path / "fresh"
    calls["count"] = 0
    with pytest.raises(CsvImportError):
        import_official_csv(OFFICIAL_CSV, fresh)
    assert not fresh.exists()
