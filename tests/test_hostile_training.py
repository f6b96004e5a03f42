"""Hostile adapters, tampered fine-tune state, non-finite numbers and numbers without bounds:
each is one line naming the file, field or option and the fix, a non-zero exit, nothing
published or half-written, and (for the numbers that would allocate) memory that stays bounded,
measured in a child process."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from matlab.cli import app
from matlab.errors import InputError
from matlab.slicing.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# A child process running one command and reporting its peak resident memory (KiB) in a file.
MEASURED_COMMAND = """
import json, os, resource, sys
from matlab.cli import app
try:
    app(sys.argv[1:], prog_name="matformer")
except SystemExit as stop:
    code = stop.code
else:
    code = 0
with open(os.environ["PEAK_FILE"], "w") as handle:
    json.dump({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "code": code}, handle)
"""
# What a process that imports torch, transformers, PEFT and lm-eval and loads a tiny model
# holds is ~0.8 GB here; each unbounded case passed 4 GB (the probes).
PEAK_BOUND_KIB = 2_000_000


def _one_line(result, message: str) -> None:
    """A non-zero exit and one error line holding `message`, the last on stderr (a command that
    ran for a while printed progress lines before it)."""
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output and message in lines[-1], result.stderr
    assert sum(line.startswith("error:") for line in lines) == 1 and lines[-1].startswith("error:"), result.stderr


def _limit_address_space() -> None:
    """In the child: an address space of 8 GiB, so that an unbounded allocation fails there
    (MemoryError) instead of taking this machine's memory from everything else."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def _measured(arguments: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    peak_file = tmp_path / "peak.json"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "PEAK_FILE": str(peak_file), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", MEASURED_COMMAND, *arguments], capture_output=True, text=True,
                          env=env, timeout=600, preexec_fn=_limit_address_space)
    assert peak_file.is_file(), done.stderr[-2000:]  # no file: the process died (its memory ran out)
    return done, json.loads(peak_file.read_text())


# -- adapters --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_adapter(tiny_text, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3nForCausalLM

    model = get_peft_model(Gemma3nForCausalLM.from_pretrained(tiny_text, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / 50)
    out = tmp_path_factory.mktemp("adapter") / "good"
    model.save_pretrained(out)
    return out


def _variant(good: Path, folder: Path, config=None, tensors=None, raw_config: str | None = None) -> Path:
    """A copy of `good` with its config changed by `config(dict)` and its tensors by `tensors(dict)`."""
    folder.mkdir(parents=True)
    if raw_config is not None:
        (folder / ADAPTER_CONFIG).write_text(raw_config)
    else:
        data = json.loads((good / ADAPTER_CONFIG).read_text())
        if config is not None:
            config(data)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(data))
    weights = load_file(good / ADAPTER_WEIGHTS)
    if tensors is not None:
        tensors(weights)
    save_file(weights, folder / ADAPTER_WEIGHTS)
    return folder


def _first(weights: dict, suffix: str) -> str:
    return next(name for name in sorted(weights) if name.endswith(suffix))


def _set_nan(weights: dict) -> None:
    weights[_first(weights, "lora_B.weight")][0, 0] = math.nan


def _set_inf(weights: dict) -> None:
    weights[_first(weights, "lora_A.weight")][1, 2] = math.inf


def _drop_b(weights: dict) -> None:
    del weights[_first(weights, "lora_B.weight")]


def _narrow_b(weights: dict) -> None:
    name = _first(weights, "lora_B.weight")
    weights[name] = weights[name][:, :3].contiguous()


def _deep(levels: int) -> str:
    return '{"r": 4, "peft_type": "LORA", "nested": ' + "[" * levels + "]" * levels + "}"


HOSTILE_ADAPTERS = {
    # name: (config change, tensor change, raw config, words the one line must hold)
    "rank-0": (lambda c: c.update(r=0), None, None, "'r' is 0"),
    "rank-disagrees": (lambda c: c.update(r=100_000), None, None, "'r' is 100000"),
    "rank-string": (lambda c: c.update(r="abc"), None, None, "'r' is 'abc'"),
    "alpha-nan": (lambda c: c.update(lora_alpha=math.nan), None, None, "lora_alpha"),
    "ab-ranks-differ": (None, _narrow_b, None, "rank"),
    "unknown-target": (lambda c: c.update(target_modules=["q_proj", "wq_proj"]), None, None, "wq_proj"),
    "missing-b": (None, _drop_b, None, "lora_B"),
    "nan-tensor": (None, _set_nan, None, "not finite"),
    "inf-tensor": (None, _set_inf, None, "not finite"),
    "nested-config": (None, None, _deep(100_000), ADAPTER_CONFIG),
    "huge-config": (None, None, json.dumps({"r": 4, "peft_type": "LORA", "padding": "x" * (2 << 20)}),
                    "larger than"),
}


@pytest.fixture(scope="module")
def hostile(good_adapter, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {name: _variant(good_adapter, root / name, config, tensors, raw)
            for name, (config, tensors, raw, _) in HOSTILE_ADAPTERS.items()}


@pytest.fixture(scope="module")
def slice_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slice") / "s.yaml"
    path.write_text("name: s\nlayers_skipped: [11]\nffn_widths: 128\n")
    return path


@pytest.mark.parametrize("name", sorted(HOSTILE_ADAPTERS))
def test_a_hostile_adapter_is_one_line_in_slice_and_eval_and_nothing_is_written(tiny_text, hostile, slice_yaml,
                                                                                 tmp_path, name):
    words = HOSTILE_ADAPTERS[name][3]
    out = tmp_path / "out"
    _one_line(runner.invoke(app, ["slice", str(tiny_text), "--config", str(slice_yaml), "--out", str(out),
                                  "--adapter", str(hostile[name])]), words)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    _one_line(runner.invoke(app, ["eval", str(tiny_text), "--suite", "nano", "--limit", "2", "--config",
                                  str(slice_yaml), "--adapter", str(hostile[name])]), words)


def test_a_hostile_adapter_is_refused_before_a_sweep_or_search_writes_its_run(tiny_text, hostile, slice_yaml,
                                                                               data_file, tmp_path):
    for name in ("missing-b", "unknown-target", "nan-tensor"):
        sweep = tmp_path / f"sweep-{name}"
        _one_line(runner.invoke(app, ["sweep", str(tiny_text), "--configs", str(slice_yaml), "--suite", "nano",
                                      "--limit", "2", "--out", str(sweep), "--adapter", str(hostile[name])]),
                  HOSTILE_ADAPTERS[name][3])
        assert not sweep.exists()
        search = tmp_path / f"search-{name}"
        _one_line(runner.invoke(app, ["search", str(tiny_text), "--max-params", "1B", "--max-evals", "2",
                                      "--calibration", str(data_file), "--out", str(search),
                                      "--adapter", str(hostile[name])]),
                  HOSTILE_ADAPTERS[name][3])
        assert not search.exists()


def test_a_rank_above_the_tensors_is_refused_in_bounded_memory(tiny_text, hostile, tmp_path):
    done, measured = _measured(["eval", str(tiny_text), "--suite", "nano", "--limit", "2", "--adapter",
                                str(hostile["rank-disagrees"])], tmp_path)
    assert measured["code"] not in (0, None) and "'r' is 100000" in done.stderr, done.stderr
    assert measured["peak_kib"] < PEAK_BOUND_KIB, measured


def test_a_good_adapter_prints_no_library_warnings(tiny_text, good_adapter, slice_yaml, tmp_path):
    """Run as a user runs it (a process of its own: the test process's warning filters would hide them)."""
    for arguments in (["eval", str(tiny_text), "--suite", "nano", "--limit", "2", "--config", str(slice_yaml),
                       "--adapter", str(good_adapter), "--json"],
                      ["slice", str(tiny_text), "--config", str(slice_yaml), "--out", str(tmp_path / "s"),
                       "--adapter", str(good_adapter)]):
        done = subprocess.run([sys.executable, "-m", "matlab", *arguments], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        assert "warn" not in done.stderr.lower(), done.stderr


# -- fine-tuning and healing: bounds before anything is allocated ---------------------------------

@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.txt"
    path.write_text(" ".join(f"item {n} is kept in box {n % 7} ." for n in range(400)))
    return path


def _finetune(checkpoint, data: Path, out: Path, *extra: str, steps: int = 6) -> list[str]:
    return ["finetune", str(checkpoint), "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", "2", "--seq-len", "24", "--lora-rank", "4", "--save-every", "2", "--seed", "1", *extra]


@pytest.mark.parametrize("option, value, words", [
    ("--lora-rank", "100000", "--lora-rank 100000"),
    ("--batch-size", "1000000", "--batch-size 1000000"),
])
def test_finetune_numbers_that_cannot_fit_are_refused_before_allocating(tiny_text, data_file, tmp_path, option, value,
                                                                         words):
    arguments = _finetune(tiny_text, data_file, tmp_path / "out")
    arguments[arguments.index(option) + 1] = value
    done, measured = _measured(arguments, tmp_path)
    assert measured["code"] not in (0, None) and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr  # before work
    assert measured["peak_kib"] < PEAK_BOUND_KIB, measured
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_heal_rank_above_the_layers_is_refused_before_allocating(tiny_text, tmp_path, data_file):
    config = tmp_path / "s.yaml"
    config.write_text("name: s\nlayers_skipped: [11]\nffn_widths: 128\n")
    base = ["heal", str(tiny_text), "--config", str(config), "--out", str(tmp_path / "out"), "--steps", "2",
            "--window", "32", "--calibration", str(data_file), "--calibration-tokens", "256"]
    for extra, words in ((["--lora-rank", "100000"], "--lora-rank 100000"),):
        done, measured = _measured(base + extra, tmp_path)
        assert measured["code"] not in (0, None) and words in done.stderr, done.stderr
        assert measured["peak_kib"] < PEAK_BOUND_KIB, measured
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_options_are_refused(tiny_text, data_file, tmp_path, value):
    out = tmp_path / "out"
    _one_line(runner.invoke(app, _finetune(tiny_text, data_file, out, "--learning-rate", value)),
              f"--learning-rate {value}")
    _one_line(runner.invoke(app, _finetune(tiny_text, data_file, out, "--full-share", value)), "--full-share")
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_a_learning_rate_that_diverges_stops_the_run_with_one_line_and_publishes_nothing(tiny_text, data_file,
                                                                                        tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, _finetune(tiny_text, data_file, out, "--learning-rate", "1e30", "--warmup-steps",
                                          "0", steps=8))
    _one_line(result, "not finite")
    assert not out.exists()


def test_weights_that_go_non_finite_stop_the_run_and_keep_the_last_good_state(tiny_text, data_file, tmp_path,
                                                                              monkeypatch):
    from matlab.errors import DivergedError
    from matlab.training import finetune
    from matlab.training.finetune import FinetuneSettings, run_finetune

    # Steps 0-4 train as usual; step 5's learning rate is infinite, so its update leaves NaN behind.
    monkeypatch.setattr(finetune, "learning_rate", lambda step, settings: 1e-3 if step < 5 else math.inf)
    out = tmp_path / "out"
    settings = FinetuneSettings(str(tiny_text), data_file, out, rank=4, steps=8, batch_size=2, sequence_length=24,
                                save_every=2, seed=1)
    with pytest.raises(DivergedError, match="step 5: the adapter holds values that are not finite.* step 4 is kept"):
        run_finetune(settings)
    assert not out.exists()
    state = torch.load(tmp_path / "out.partial" / "state.pt", weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(tensor).all() for tensor in state["adapter"].values())


# -- resumed state ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def interrupted(tiny_text, data_file, tmp_path_factory) -> Path:
    """The `.partial` folder of a fine-tune stopped after its step-4 save (of 6 steps)."""
    from matlab.progress import Progress
    from matlab.training.finetune import FinetuneSettings, run_finetune

    class StopAt(Progress):
        def __init__(self):
            self.done = 0

        def advance(self, amount: int = 1) -> None:
            self.done += amount
            if self.done == 5:
                raise KeyboardInterrupt

    out = tmp_path_factory.mktemp("interrupted") / "out"
    settings = FinetuneSettings(str(tiny_text), data_file, out, rank=4, steps=6, batch_size=2, sequence_length=24,
                                save_every=2, seed=1)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(settings, progress=StopAt())
    assert torch.load(out.with_name("out.partial") / "state.pt", weights_only=True)["step"] == 4
    return out.with_name("out.partial")


def _tamper(state: dict, name: str) -> None:
    adapter_name = sorted(state["adapter"])[0]
    changes = {
        "step-huge": lambda: state.update(step=10**9),
        "step-negative": lambda: state.update(step=-3),
        "step-string": lambda: state.update(step="four"),
        "missing-key": lambda: state.pop("optimizer"),
        "adapter-shape": lambda: state["adapter"].update({adapter_name: torch.zeros(3, 3)}),
        "adapter-nan": lambda: state["adapter"][adapter_name].fill_(math.nan),
        "curve-string": lambda: state.update(curve="lots"),
        "rng-bad": lambda: state.update(rng=torch.zeros(7, dtype=torch.uint8)),
        "optimizer-empty": lambda: state.update(optimizer={}),
        "optimizer-shape": lambda: next(iter(state["optimizer"]["state"].values())).update(
            exp_avg=torch.zeros(2, 2)),
    }
    changes[name]()


TAMPERED = {"step-huge": "step", "step-negative": "step", "step-string": "step", "missing-key": "optimizer",
            "adapter-shape": "adapter", "adapter-nan": "adapter", "curve-string": "curve", "rng-bad": "rng",
            "optimizer-empty": "optimizer", "optimizer-shape": "optimizer"}


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampered_state_is_one_line_naming_the_field_and_nothing_is_published(tiny_text, data_file, interrupted,
                                                                               tmp_path, name):
    partial = tmp_path / "out.partial"
    shutil.copytree(interrupted, partial)
    state = torch.load(partial / "state.pt", weights_only=True)
    _tamper(state, name)
    torch.save(state, partial / "state.pt")
    before = (partial / "state.pt").read_bytes()
    _one_line(runner.invoke(app, _finetune(tiny_text, data_file, tmp_path / "out")), f"'{TAMPERED[name]}'")
    assert not (tmp_path / "out").exists()
    assert (partial / "state.pt").read_bytes() == before  # kept as found, for the user to inspect


def test_a_partial_folder_that_is_a_link_is_refused_and_nothing_is_written_through_it(tiny_text, data_file,
                                                                                       tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out.partial").symlink_to(elsewhere)
    _one_line(runner.invoke(app, _finetune(tiny_text, data_file, tmp_path / "out")), "link")
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "out").exists()


# -- non-finite logits -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def broken_checkpoint(tiny_text, tmp_path_factory) -> Path:
    """tiny_text with one NaN in a layer's attention output projection."""
    directory = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_text, directory)
    for shard in sorted(directory.glob("*.safetensors")):
        tensors = load_file(shard)
        names = [name for name in tensors if name.endswith("layers.2.self_attn.o_proj.weight")]
        if names:
            tensors[names[0]][0, 0] = math.nan
            save_file(tensors, shard, metadata={"format": "pt"})
            return directory
    raise AssertionError("no o_proj weight found")


def test_non_finite_logits_fail_the_evaluation_with_one_line(broken_checkpoint, tmp_path):
    _one_line(runner.invoke(app, ["eval", str(broken_checkpoint), "--suite", "nano", "--limit", "2"]), "not finite")
    _one_line(runner.invoke(app, ["score", str(broken_checkpoint), "--text", "the cat sat on the mat"]), "not finite")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat " * 20)
    _one_line(runner.invoke(app, ["perplexity", str(broken_checkpoint), "--file", str(text)]), "not finite")
    sweep = tmp_path / "sweep"
    config = tmp_path / "s.yaml"
    config.write_text("name: s\nffn_widths: 128\n")
    _one_line(runner.invoke(app, ["sweep", str(broken_checkpoint), "--configs", str(config), "--suite", "nano",
                                  "--limit", "2", "--out", str(sweep), "--latency-rounds", "1"]), "not finite")
    assert not list((sweep / "configs").glob("*.json")) if (sweep / "configs").exists() else True


# -- reading only what is needed -------------------------------------------------------------------

def test_a_jsonl_line_longer_than_any_text_needs_is_refused_with_its_length_in_bounded_memory(tmp_path):
    from matlab.core.calibration import make_calibration, read_calibration
    from matlab.core.loading import load_tokenizer
    from matlab.io.resolve import resolve_checkpoint

    path = tmp_path / "long.jsonl"
    line_bytes = 40 << 20
    with path.open("w") as handle:
        handle.write(json.dumps({"text": "short first text ."}) + "\n")
        handle.write('{"text": "' + "word " * (line_bytes // 5) + '"}\n')
    tokenizer = load_tokenizer(resolve_checkpoint("nano"))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"line 2 is [\d,]+ bytes"):
            make_calibration(tokenizer, read_calibration(path), str(path), 64, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < line_bytes, peak  # the line is never held whole


# -- paths and names -------------------------------------------------------------------------------

def test_conform_resolves_a_relative_path_before_the_child_runs(tiny_text, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_text.parent)
    result = runner.invoke(app, ["conform", tiny_text.name, "--runtime", "transformers", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "runs"


def test_a_bundled_name_wins_over_a_folder_of_that_name_and_a_path_reaches_the_folder(tmp_path, monkeypatch):
    from matlab.slice_config.bundled import bundled_root, resolve_config_entry, resolve_suite

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nano").mkdir()
    (tmp_path / "nano" / "mine.yaml").write_text("name: mine\nffn_widths: 128\n")
    assert resolve_suite("nano") == bundled_root("evals") / "nano.yaml"
    assert resolve_config_entry("nano") == sorted((bundled_root("slice_configs") / "nano").glob("*.yaml"))
    assert resolve_config_entry("./nano") == [Path("nano") / "mine.yaml"]
    assert resolve_suite("./nano") == Path("nano")
