"""Sweeps and searches on Ray (local, 2 CPU workers): the same rows and frontier as serial runs,
workers and drivers killed mid-run, bad clusters, and Ray missing."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from matlab.core.loading import load_model
from matlab.distributed.pool import DistributedError, PoolSettings, WorkerPool
from matlab.harness.results import TIMING_FIELDS
from matlab.harness.suite import load_suite
from matlab.harness.sweep import SweepSettings, run_sweep
from matlab.report.report import build_report
from matlab.search.run import SearchSettings, run_search
from matlab.slice_config.bundled import resolve_config_entry, resolve_suite

CONFIGS = [path for path in resolve_config_entry("nano") if path.stem in ("nano-e2b", "nano-l1", "nano-s1", "nano-b1",
                                                                           "nano-e4b", "nano-s3")]


def _rows(run_dir: Path) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if key not in TIMING_FIELDS}
            for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _settings() -> SweepSettings:
    return SweepSettings(load_suite(resolve_suite("nano")), limit=3, latency_rounds=1)


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("serial") / "run"
    run_sweep("nano", CONFIGS, run_dir, _settings())
    return run_dir


def test_killed_driver_leaves_a_run_that_resumes_serially(serial, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "matlab", "sweep", "nano", *[arg for path in CONFIGS for arg in ("--configs",
               str(path))], "--suite", "nano", "--limit", "3", "--latency-rounds", "1", "--out", str(run_dir)]
    driver = subprocess.Popen([*command, "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((run_dir / "configs").glob("*.json"))) < 1:
        time.sleep(0.2)
    family = psutil.Process(driver.pid).children(recursive=True)  # the local Ray it started
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    recorded = len(list((run_dir / "configs").glob("*.json")))
    assert 1 <= recorded < len(CONFIGS), "the kill should land mid-sweep"
    resumed = subprocess.run(command, capture_output=True, text=True)  # serially, without Ray
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(CONFIGS) - recorded} config(s) evaluated, {recorded} already done" in resumed.stdout
    assert _rows(run_dir) == _rows(serial)


def test_unreachable_cluster_missing_ray_and_missing_gpus_are_one_line_and_write_nothing(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "matlab", "sweep", "nano", "--configs", str(CONFIGS[0]), "--suite", "nano",
            "--limit", "1", "--out", str(out), "--workers", "2"]
    unreachable = subprocess.run([*base, "--ray-address", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert "--ray-address 127.0.0.1:1: cannot reach the Ray cluster" in unreachable.stderr and not out.exists()
    blocked = "import sys; sys.modules['ray'] = None; import runpy; sys.argv = ['matformer', *sys.argv[1:]]; " \
              "runpy.run_module('matlab', run_name='__main__')"
    missing = subprocess.run([sys.executable, "-c", blocked, *base[3:]], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "pip install 'matformer-lab[distributed]'" in missing.stderr
    assert not out.exists()
    too_many = subprocess.run([*base, "--gpus-per-worker", "1000"], capture_output=True, text=True, timeout=120)
    assert too_many.returncode == 1 and "GPUs, and each worker takes 1000; use fewer workers" in too_many.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_two_workers_give_the_serial_rows(ray_instance, serial, tmp_path):
    evaluated = run_sweep("nano", CONFIGS, tmp_path / "run", _settings(), pool=PoolSettings(2))
    assert len(evaluated) == len(CONFIGS)
    assert _rows(tmp_path / "run") == _rows(serial)
    # Where throughput was taken is in every row, and the report says it.
    place = {json.loads(line)["latency_measured_on"] for line in (tmp_path / "run" / "results.jsonl").open()}
    assert place == {f"one Ray worker on {socket.gethostname()}, the other workers idle"}
    assert {json.loads(line)["latency_measured_on"] for line in (serial / "results.jsonl").open()} == {"this process"}
    page = build_report(tmp_path / "run", tmp_path / "report").read_text()
    assert "the other workers idle" in page


def _worker_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any("EvaluationWorker" in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _kill_a_worker_during(run, started) -> None:
    """Run `run` in a thread, kill one worker process once `started()` holds, and let it end."""
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _guarded(errors, run))
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and not started():
        time.sleep(0.05)
    victims = _worker_processes()
    assert victims, "no worker process found to kill"
    victims[0].kill()
    thread.join(timeout=600)
    assert not errors, errors


def test_a_killed_worker_has_its_work_retried_and_nothing_is_lost(ray_instance, serial, tmp_path):
    run_dir = tmp_path / "run"
    _kill_a_worker_during(lambda: run_sweep("nano", CONFIGS, run_dir, _settings(), pool=PoolSettings(2)),
                          lambda: len(list((run_dir / "configs").glob("*.json"))) >= 1)
    assert _rows(run_dir) == _rows(serial)  # every config once, the same rows


def _guarded(errors: list, function) -> None:
    try:
        function()
    except BaseException as error:  # reported to the test's thread
        errors.append(error)


SEARCH = dict(max_params=2_200_000, max_evals=60, window=64, calibration_tokens=256)


def _journal(result) -> list[dict]:  # in the order written, timings aside
    return [{key: value for key, value in json.loads(line).items() if not key.endswith("_seconds")}
            for line in (result.directory / "candidates.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def serial_search(tmp_path_factory):
    return run_search(SearchSettings("nano", tmp_path_factory.mktemp("search") / "serial", **SEARCH))


def test_search_frontier_does_not_depend_on_the_number_of_workers(ray_instance, serial_search, tmp_path):
    parallel = run_search(SearchSettings("nano", tmp_path / "parallel", pool=PoolSettings(2), **SEARCH))
    assert parallel.summary["frontier"] == serial_search.summary["frontier"]
    assert parallel.summary["best"] == serial_search.summary["best"]
    assert _journal(parallel) == _journal(serial_search)


def test_a_worker_killed_mid_search_is_replaced_with_its_setup(ray_instance, serial_search, tmp_path):
    # The replacement gets the calibration and the full model's reference again before it
    # evaluates: the search ends as the serial one does.
    out, found = tmp_path / "killed", []
    journal = out / "candidates.jsonl"
    _kill_a_worker_during(lambda: found.append(run_search(SearchSettings("nano", out, pool=PoolSettings(2), **SEARCH))),
                          lambda: journal.is_file() and len(journal.read_text().splitlines()) >= 5)
    assert found[0].summary["frontier"] == serial_search.summary["frontier"]
    assert _journal(found[0]) == _journal(serial_search)


def test_a_worker_that_cannot_load_the_model_is_one_line_not_a_death(ray_instance, tmp_path):
    # Without a GPU, a worker asked to run on CUDA fails while loading: that is the cause the
    # user sees, at once, and not "every worker died" after reloading it again and again.
    settings = SweepSettings(load_suite(resolve_suite("nano")), limit=1, device="cuda")
    with pytest.raises(DistributedError, match=r"^a worker could not load the model: .*(NVIDIA|CUDA|cuda)"):
        run_sweep("nano", CONFIGS[:1], tmp_path / "run", settings, pool=PoolSettings(2, gpus_per_worker=0))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("device", "gpus", "message"), [
    ("cuda:1", None, "--device cuda:1: each worker sees only the GPUs Ray gives it; use --device cuda"),
    ("cuda", 1.5, "--gpus-per-worker 1.5: a fraction of one GPU or a whole number of GPUs"),
])
def test_devices_and_gpu_shares_ray_cannot_honour_are_refused_before_ray_starts(device, gpus, message):
    with pytest.raises(DistributedError, match=re.escape(message)):
        WorkerPool(functools.partial(load_model, "nano", device=device), device, PoolSettings(2, gpus_per_worker=gpus))
