"""`matformer export --format gguf` around a fake llama.cpp converter: the file appears whole or
not at all, never inside the slice, replaces only a GGUF file, and a converter's refusal is one
line in its own words. (The real converter is exercised under `-m runtimes`.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matlab.cli import app
from matlab.runtimes.envs import INSTALLED, ROOT_VARIABLE
from matlab.runtimes.llama_cpp import LLAMA_CPP_PYTHON

cli = CliRunner()

# Writes GGUF magic and its arguments to --outfile; refuses a checkpoint whose config says so.
FAKE_CONVERTER = """\
import json, sys
from pathlib import Path
args = sys.argv[1:]
model, out, outtype = Path(args[0]), Path(args[args.index("--outfile") + 1]), args[args.index("--outtype") + 1]
if json.loads((model / "config.json").read_text()).get("refuse"):
    print("INFO: loading model", file=sys.stderr)
    print("NotImplementedError: BPE pre-tokenizer was not recognized", file=sys.stderr)
    print("done", file=sys.stderr)
    sys.exit(1)
out.write_bytes(b"GGUF" + json.dumps({"model": str(model), "type": outtype}).encode())
"""


@pytest.fixture()
def fake_llama_cpp(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "runtimes"
    environment = root / "llama.cpp"
    (environment / "venv" / "bin").mkdir(parents=True)
    (environment / "venv" / "bin" / "python").symlink_to(sys.executable)
    tree = environment / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    tree.mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    (environment / INSTALLED).write_text(json.dumps({"runtime": "llama.cpp", "versions": {}}))
    monkeypatch.setenv(ROOT_VARIABLE, str(root))
    return root


@pytest.fixture()
def slice_dir(tmp_path) -> Path:
    directory = tmp_path / "slice"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gemma3n_text"}))
    return directory


def _export(*arguments: str):
    return cli.invoke(app, ["export", *arguments])


def test_export_writes_the_converters_file_and_nothing_else(fake_llama_cpp, slice_dir, tmp_path):
    out = tmp_path / "model.gguf"
    result = _export(str(slice_dir), "--out", str(out), "--type", "q8_0")
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_bytes()[4:])
    assert written["type"] == "q8_0" and "model.gguf" not in written["model"]  # converted from the slice
    assert f"(q8_0, {out.stat().st_size:,} bytes)" in " ".join(result.output.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.gguf", "runtimes", "slice"]


def test_converter_refusal_is_its_own_line_and_leaves_nothing(fake_llama_cpp, slice_dir, tmp_path):
    (slice_dir / "config.json").write_text(json.dumps({"model_type": "gemma3n_text", "refuse": True}))
    result = _export(str(slice_dir), "--out", str(tmp_path / "model.gguf"))
    assert result.exit_code != 0
    assert "llama.cpp's converter refused" in result.output
    assert "NotImplementedError: BPE pre-tokenizer was not recognized" in result.output
    assert "Traceback" not in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runtimes", "slice"]


def test_out_inside_the_slice_is_refused(fake_llama_cpp, slice_dir):
    before = sorted(path.name for path in slice_dir.iterdir())
    result = _export(str(slice_dir), "--out", str(slice_dir / "model.gguf"))
    assert result.exit_code != 0 and "--out" in result.output
    assert sorted(path.name for path in slice_dir.iterdir()) == before


def test_force_replaces_a_gguf_but_never_another_file(fake_llama_cpp, slice_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    refused = _export(str(slice_dir), "--out", str(notes), "--force")
    assert refused.exit_code != 0 and "is not a GGUF file" in refused.output
    assert notes.read_text() == "mine"

    old = tmp_path / "old.gguf"
    old.write_bytes(b"GGUF old")
    kept = _export(str(slice_dir), "--out", str(old))
    assert kept.exit_code != 0 and "--force" in kept.output and old.read_bytes() == b"GGUF old"
    replaced = _export(str(slice_dir), "--out", str(old), "--force", "--type", "f32")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(old.read_bytes()[4:])["type"] == "f32"


@pytest.mark.parametrize(("arguments", "words"), [
    (("--type", "q3_xs"), "unknown GGUF weight type"),
    (("--format", "onnx"), "only gguf can be exported"),
])
def test_bad_options_are_one_line(fake_llama_cpp, slice_dir, tmp_path, arguments, words):
    result = _export(str(slice_dir), "--out", str(tmp_path / "model.gguf"), *arguments)
    assert result.exit_code != 0 and words in result.output
    assert not (tmp_path / "model.gguf").exists()


def test_missing_llama_cpp_names_the_install_command(tmp_path, slice_dir, monkeypatch):
    monkeypatch.setenv(ROOT_VARIABLE, str(tmp_path / "empty"))
    result = _export(str(slice_dir), "--out", str(tmp_path / "model.gguf"))
    assert result.exit_code != 0 and "matformer runtimes install llama.cpp" in " ".join(result.output.split())


@pytest.mark.parametrize("text_only", [False, True])
def test_a_slices_recorded_formats_are_the_formats_its_config_counted(tiny_multimodal, tmp_path, text_only):
    """`export --type formats` types each tensor of the slice by the weight formats its
    provenance records, re-read on the slice's renumbered layers: the bytes equal what `params`
    counted on the source for the same config (layers named by base index, some skipped)."""
    from matlab.runtimes.gguf import PER_TENSOR as FORMATS_TYPE
    from matlab.runtimes.gguf import default_type, recorded_tensor_formats

    config = tmp_path / "q.yaml"
    config.write_text("name: q\nlayers_skipped: [2, 11]\nffn_widths: 128\nweight_formats:\n  default: q8_0\n"
                      "  embeddings: q4_0\n  layers: {3: {ffn: q5_0}, 12: q4_1}\n")
    out = tmp_path / "slice"
    sliced = cli.invoke(app, ["slice", str(tiny_multimodal), "--config", str(config), "--out", str(out),
                              *(["--text-only"] if text_only else [])])
    assert sliced.exit_code == 0, sliced.output
    counted = json.loads((out / "matformer_provenance.json").read_text())["params"]["format_bytes"]
    tensors = recorded_tensor_formats(out)
    assert sum(tensor.nbytes for tensor in tensors) == counted
    by_name = {tensor.name.replace("language_model.", ""): tensor.format for tensor in tensors}
    # Base layer 3 is the slice's layer 2 (layer 2 skipped); base 12 is its 10.
    assert by_name["model.layers.2.mlp.up_proj.weight"] == "q5_0"
    assert by_name["model.layers.2.self_attn.q_proj.weight"] == "q8_0"
    assert by_name["model.layers.10.self_attn.o_proj.weight"] == by_name["model.layers.10.mlp.gate_proj.weight"] == "q4_1"
    assert by_name["model.embed_tokens.weight"] == "q4_0"
    assert default_type(out) == FORMATS_TYPE


def test_formats_without_recorded_formats_is_one_line(fake_llama_cpp, tiny_text, tmp_path):
    out = tmp_path / "slice"
    config = tmp_path / "plain.yaml"
    config.write_text("name: plain\nffn_widths: 128\n")
    assert cli.invoke(app, ["slice", str(tiny_text), "--config", str(config), "--out", str(out)]).exit_code == 0
    result = _export(str(out), "--out", str(tmp_path / "m.gguf"), "--type", "formats")
    assert result.exit_code == 2 and "its slice config names no weight_formats" in result.stderr
    assert not (tmp_path / "m.gguf").exists()
    default = _export(str(out), "--out", str(tmp_path / "m.gguf"))  # no formats recorded: f16, as before
    assert default.exit_code == 0 and json.loads((tmp_path / "m.gguf").read_bytes()[4:])["type"] == "f16"
