"""Hostile checkpoints and outputs: corrupt safetensors headers and indexes are refused as the
`safetensors` library refuses them, `--out` never overlaps an input, a replace keeps the old
output through any failure, killed runs' leftovers are cleaned, system errors and control
characters reach the user as one safe line."""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest
from safetensors import SafetensorError, safe_open
from typer.testing import CliRunner

from matlab.cli import app
from matlab.errors import CheckpointError
from matlab.io import staging
from matlab.io.reader import INDEX_NAME, CheckpointFiles

runner = CliRunner()
E2B_LIKE = "name: half\nffn_widths: 128\n"


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file under `directory` (links followed) by relative path and content hash."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def siblings(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.parent.iterdir() if entry.name.startswith(f".{path.name}."))


@pytest.fixture()
def checkpoint(tiny_text, tmp_path) -> Path:
    copy_dir = tmp_path / "ckpt"
    shutil.copytree(tiny_text, copy_dir)
    return copy_dir


@pytest.fixture()
def config_file(tmp_path) -> Path:
    path = tmp_path / "half.yaml"
    path.write_text(E2B_LIKE)
    return path


def _first_shard(directory: Path) -> Path:
    index = json.loads((directory / INDEX_NAME).read_text())
    return directory / sorted(set(index["weight_map"].values()))[0]


def _rewrite_header(path: Path, change) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    header, data = change(header, data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _tensors(header: dict) -> list[str]:
    """Tensor names of a header in offset order."""
    return sorted((name for name in header if name != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])


def _overlap(header, data):
    second = _tensors(header)[1]
    begin, end = header[second]["data_offsets"]
    header[second]["data_offsets"] = [begin - 4, end - 4]
    return header, data


def _wrong_dtype(header, data):
    name = next(n for n in _tensors(header) if header[n]["dtype"] == "F32")
    header[name]["dtype"] = "F16"
    return header, data


def _wrong_shape(header, data):
    name = _tensors(header)[0]
    header[name]["shape"] = [*header[name]["shape"][:-1], header[name]["shape"][-1] + 1]
    return header, data


def _reversed(header, data):
    name = _tensors(header)[0]
    header[name]["data_offsets"] = header[name]["data_offsets"][::-1]
    return header, data


def _no_offsets(header, data):
    del header[_tensors(header)[0]]["data_offsets"]
    return header, data


def _string_shape(header, data):
    header[_tensors(header)[0]]["shape"] = "64"
    return header, data


def _unknown_dtype(header, data):
    header[_tensors(header)[0]]["dtype"] = "F12"
    return header, data


def _as_list(header, data):
    return [header[name] for name in _tensors(header)], data


def _truncated(header, data):
    return header, data[:-8]


CORRUPTIONS = {"overlapping offsets": _overlap, "dtype against byte length": _wrong_dtype,
               "shape against byte length": _wrong_shape, "reversed offsets": _reversed,
               "missing offsets": _no_offsets, "string shape": _string_shape, "unknown dtype": _unknown_dtype,
               "header is a list": _as_list, "truncated data": _truncated}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_header_is_refused_as_safetensors_refuses_it(checkpoint, config_file, tmp_path, kind):
    shard = _first_shard(checkpoint)
    _rewrite_header(shard, CORRUPTIONS[kind])
    with pytest.raises(SafetensorError), safe_open(shard, framework="numpy"):  # the oracle refuses it
        pass
    with pytest.raises(CheckpointError, match=f"{shard.name}: not a valid safetensors file"):
        CheckpointFiles(checkpoint)
    before = tree_digest(checkpoint)
    out = tmp_path / "out"
    for command in (["params", "--checkpoint", str(checkpoint)],
                    ["validate", str(config_file), "--checkpoint", str(checkpoint)],
                    ["slice", str(checkpoint), "--config", str(config_file), "--out", str(out)],
                    ["score", str(checkpoint), "--text", "hello"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        assert "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "not a valid safetensors file" in lines[0], (command, result.output)
    assert not out.exists() and siblings(out) == []
    assert tree_digest(checkpoint) == before


def test_clean_checkpoint_still_opens_in_both(checkpoint):
    files = CheckpointFiles(checkpoint)
    for path in files.files:
        with safe_open(path, framework="numpy") as handle:
            assert set(handle.keys()) <= set(files.tensors)
    assert len(files.tensors) > 100


@pytest.mark.parametrize("name", ["../../x.safetensors", "/etc/passwd", "sub/../../x.safetensors", "C:\\x"])
def test_index_naming_a_file_outside_the_checkpoint_is_refused(checkpoint, config_file, tmp_path, name):
    outside = tmp_path / "x.safetensors"
    shutil.copy(_first_shard(checkpoint), outside)
    index = json.loads((checkpoint / INDEX_NAME).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    (checkpoint / INDEX_NAME).write_text(json.dumps(index))
    out = tmp_path / "out"
    result = runner.invoke(app, ["slice", str(checkpoint), "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 1
    assert "outside the checkpoint folder" in result.output and first in result.output
    assert not out.exists()


@pytest.mark.parametrize("text", ["garbage{", "[1, 2]", '{"weight_map": []}', '{"weight_map": {"a": 5}}'])
def test_garbage_index_is_one_line(checkpoint, text):
    (checkpoint / INDEX_NAME).write_text(text)
    result = runner.invoke(app, ["params", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 1 and INDEX_NAME in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_hub_cache_layout_with_links_to_blobs_still_slices(checkpoint, config_file, tmp_path):
    """The Hub cache keeps files in blobs/ and links to them from snapshots/REV/."""
    blobs, snapshot = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in checkpoint.iterdir():
        blob = blobs / hashlib.sha256(path.name.encode()).hexdigest()
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    out = tmp_path / "out"
    result = runner.invoke(app, ["slice", str(snapshot), "--config", str(config_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / INDEX_NAME).is_file()


def _slice(checkpoint: Path, config: Path, out: Path, *extra: str):
    return runner.invoke(app, ["slice", str(checkpoint), "--config", str(config), "--out", str(out), *extra])


@pytest.mark.parametrize("where", ["the checkpoint", "its parent", "inside it"])
def test_out_overlapping_the_checkpoint_is_refused_even_with_force(checkpoint, config_file, where):
    out = {"the checkpoint": checkpoint, "its parent": checkpoint.parent, "inside it": checkpoint / "sliced"}[where]
    before = tree_digest(checkpoint.parent)
    result = _slice(checkpoint, config_file, out, "--force")
    assert result.exit_code == 2, result.output
    assert "input" in result.output and "choose an --out outside it" in result.output
    assert tree_digest(checkpoint.parent) == before
    assert not (checkpoint / "sliced").exists()


def test_out_holding_the_slice_config_is_refused(checkpoint, tmp_path):
    out = tmp_path / "previous"
    assert _slice(checkpoint, _write(tmp_path / "c.yaml"), out).exit_code == 0
    config = _write(out / "mine.yaml")
    result = _slice(checkpoint, config, out, "--force")
    assert result.exit_code == 2 and "contains the input" in result.output
    assert config.read_text() == E2B_LIKE


def test_out_through_a_link_to_the_checkpoint_is_refused(checkpoint, config_file, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(checkpoint)
    result = _slice(checkpoint, config_file, link, "--force")
    assert result.exit_code == 2 and "is or contains the input" in result.output
    assert (checkpoint / INDEX_NAME).is_file()


def _write(path: Path, text: str = E2B_LIKE) -> Path:
    path.write_text(text)
    return path


def test_force_replaces_only_an_output_of_this_tool(checkpoint, config_file, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _write(home / "thesis.tex", "years of work")
    _write(home / "config.json", "{}")  # a common name: not enough to call it ours
    result = _slice(checkpoint, config_file, home, "--force")
    assert result.exit_code == 2 and "was not written by MatFormer Lab" in result.output
    assert (home / "thesis.tex").read_text() == "years of work" and (home / "config.json").is_file()


def test_force_replace_is_atomic_and_leaves_nothing_beside(checkpoint, config_file, tmp_path):
    out = tmp_path / "out"
    assert _slice(checkpoint, config_file, out).exit_code == 0
    (out / "old-marker").write_text("old")
    assert _slice(checkpoint, config_file, out, "--force").exit_code == 0
    assert not (out / "old-marker").exists() and (out / INDEX_NAME).is_file()
    assert siblings(out) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_replace_failing_at_the_swap_keeps_the_old_output(checkpoint, config_file, tmp_path, monkeypatch, exchange):
    out = tmp_path / "out"
    assert _slice(checkpoint, config_file, out).exit_code == 0
    (out / "old-marker").write_text("old")
    before = tree_digest(out)
    real_rename = os.rename

    def failing_exchange(first, second):
        raise OSError(errno.EIO, "Input/output error", str(second))

    def failing_second_rename(source, target):
        if Path(source).name.startswith(".out.tmp-"):
            raise OSError(errno.EIO, "Input/output error", str(target))
        return real_rename(source, target)

    if exchange:
        monkeypatch.setattr(staging, "_exchange", failing_exchange)
    else:
        monkeypatch.setattr(staging, "_exchange", lambda first, second: False)
        monkeypatch.setattr(staging.os, "rename", failing_second_rename)
    result = _slice(checkpoint, config_file, out, "--force")
    assert result.exit_code == 1 and "Input/output error" in result.output
    assert tree_digest(out) == before
    assert siblings(out) == []


def test_exchange_swaps_directories_atomically(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _write(first / "f", "first")
    _write(second / "f", "second")
    if not staging._exchange(first, second):
        pytest.skip("this filesystem cannot exchange directories; the two-rename path is tested above")
    assert (first / "f").read_text() == "second" and (second / "f").read_text() == "first"


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid += 1


def _aged(path: Path) -> Path:
    """Older than a run's first moments (a fresh staging folder may not be flocked yet)."""
    old = os.stat(path).st_mtime - 3600
    os.utime(path, (old, old))
    return path


def test_leftovers_of_killed_runs_are_removed_and_live_ones_kept(checkpoint, config_file, tmp_path):
    out = tmp_path / "out"
    host = staging._host_tag()
    dead = tmp_path / f".out.tmp-{host}-{_dead_pid()}-x1"
    live = tmp_path / f".out.tmp-{host}-1-x2"  # pid 1 of another PID namespace: its flock says it works
    older = tmp_path / ".out.tmp-k2j3h4g5"  # the naming of earlier versions: owner unknown
    for leftover in (dead, live, older):
        leftover.mkdir()
        _write(leftover / "model-00001-of-00002.safetensors", "half")
        _aged(leftover)
    holder = staging._hold(live)
    try:
        result = _slice(checkpoint, config_file, out)
    finally:
        os.close(holder)
    assert result.exit_code == 0, result.output
    assert not dead.exists() and live.exists() and older.exists()
    assert "warning:" in result.output and older.name in result.output and "killed" in result.output


def test_old_output_moved_aside_by_a_killed_replace_is_restored(checkpoint, config_file, tmp_path):
    out = tmp_path / "out"
    assert _slice(checkpoint, config_file, out).exit_code == 0
    before = tree_digest(out)
    aside = tmp_path / f".out.old-{staging._host_tag()}-{_dead_pid()}-x3"
    aside.mkdir()
    os.rename(out, aside / "out")  # killed between the two renames of a replace
    _aged(aside)
    result = _slice(checkpoint, config_file, out)  # no --force: the restored output is refused, not replaced
    assert result.exit_code == 2 and "restored the previous output" in result.output
    assert tree_digest(out) == before and siblings(out) == []


def test_outputs_named_with_glob_characters_find_their_leftovers(checkpoint, config_file, tmp_path):
    out = tmp_path / "run[1]"
    dead = _aged_dir(tmp_path / f".run[1].tmp-{staging._host_tag()}-{_dead_pid()}-x4")
    other = _aged_dir(tmp_path / f".run1.tmp-{staging._host_tag()}-{_dead_pid()}-x5")  # another output's
    result = _slice(checkpoint, config_file, out)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert not dead.exists() and other.exists()


def _aged_dir(path: Path) -> Path:
    path.mkdir()
    return _aged(path)


def test_force_through_a_link_leaves_no_link_behind(checkpoint, config_file, tmp_path):
    real = tmp_path / "real"
    assert _slice(checkpoint, config_file, real).exit_code == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    assert _slice(checkpoint, config_file, link, "--force").exit_code == 0
    assert link.is_dir() and not link.is_symlink() and (link / INDEX_NAME).is_file()
    assert siblings(link) == [] and (real / INDEX_NAME).is_file()  # the link's target is left as it was


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_system_errors_while_writing_are_one_line_and_leave_nothing(checkpoint, config_file, tmp_path, monkeypatch,
                                                                     code):
    from matlab.io import writer

    def fail(self, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(writer.ShardedWriter, "_write_all", fail)
    monkeypatch.setattr(writer.ShardedWriter, "copy_range", lambda self, *args: fail(self, b""))
    out = tmp_path / "out"
    result = _slice(checkpoint, config_file, out)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and os.strerror(code) in lines[0] and "Traceback" not in result.output
    assert not out.exists() and siblings(out) == []


def test_read_only_parent_is_one_line(checkpoint, config_file, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(staging.tempfile, "mkdtemp", refuse)
    result = _slice(checkpoint, config_file, tmp_path / "out")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path}: Read-only file system; the filesystem is read-only: choose a writable --out (nothing "
        "was published: an output appears only when complete)"]


def test_control_characters_never_reach_the_terminal(checkpoint, tmp_path):
    config = _write(tmp_path / "evil.yaml", 'name: "nice\\e]0;pwned\\a\\e[2J\\u202e"\nffn_widths: 128\n')
    result = runner.invoke(app, ["params", "--checkpoint", str(checkpoint), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\u202e" not in result.output
    assert "nice\\x1b]0;pwned" in result.output
    missing = runner.invoke(app, ["params", "--checkpoint", str(tmp_path / "no\x1b[31mdir")])
    assert missing.exit_code == 1 and "\x1b" not in missing.output and "no\\x1b[31mdir" in missing.output


def test_model_card_escapes_names_and_descriptions(checkpoint, tmp_path):
    config = _write(tmp_path / "card.yaml", 'name: "a <!-- b"\ndescription: "<script>x</script>\\n# heading"\n'
                                            "ffn_widths: 128\n")
    out = tmp_path / "out"
    assert _slice(checkpoint, config, out).exit_code == 0
    card = (out / "README.md").read_text()
    assert "<!--" not in card and "<script>" not in card
    assert "# a &lt;!-- b: a MatFormer slice" in card and "&lt;script&gt;x&lt;/script&gt;" in card
    assert "runs in:" in card and "| total |" in card  # the rest of the card is there


def test_corrupt_tensor_shapes_against_config_are_one_line_when_loading(checkpoint):
    shard = _first_shard(checkpoint)

    def grow(header, data):
        name = next(n for n in _tensors(header) if len(header[n]["shape"]) == 1)
        begin, end = header[name]["data_offsets"]
        header = copy.deepcopy(header)
        header[name]["shape"] = [(end - begin) // 2]
        header[name]["dtype"] = "BF16"
        return header, data

    _rewrite_header(shard, grow)
    result = runner.invoke(app, ["score", str(checkpoint), "--text", "hello"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "tensor shapes disagree with config.json" in result.output and "is [" in result.output


def test_hostname_tag_is_a_plain_name(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "a.b/c d")
    assert staging._host_tag() == "a-b-c-d"


def test_csv_import_never_writes_over_the_csv_it_reads(tmp_path):
    official = Path(__file__).resolve().parent.parent / "slice_configs" / "gemma-3n-e4b" / "gemma3n-slicing-configs.csv"
    csv_path = tmp_path / "e2b.yaml"  # named as one of its rows' outputs
    shutil.copy(official, csv_path)
    before = csv_path.read_bytes()
    result = runner.invoke(app, ["configs", "import", str(csv_path), "--out", str(tmp_path), "--force"])
    assert result.exit_code == 2 and "is or contains the input" in result.output
    assert csv_path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["e2b.yaml"]


def test_disk_full_during_a_sweep_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    from matlab.harness import results

    real = results.write_atomic
    calls = {"n": 0}

    def full_after_the_first(path, text):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(results, "write_atomic", full_after_the_first)
    config = Path(__file__).resolve().parent.parent / "slice_configs" / "nano" / "nano-e2b.yaml"
    suite = _write(tmp_path / "suite.yaml", f"name: tiny\ntask_dirs: [{config.parent.parent.parent / 'evals' / 'nano'}]\n"
                                            "tasks:\n  - name: nano_facts\n")
    command = ["sweep", "nano", "--configs", str(config), "--suite", str(suite), "--out", str(tmp_path / "run"),
               "--limit", "1"]
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "No space left on device; free some space" in result.output
    assert not list((tmp_path / "run").glob("configs/.*"))  # no temporary file left in the run
    monkeypatch.setattr(results, "write_atomic", real)
    assert runner.invoke(app, command).exit_code == 0  # the run was left resumable
