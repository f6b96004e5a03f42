"""The thread policy: a short spin set before torch starts in the tool's processes on a busy
machine, torch's own at rest, the user's where they decided; forwarded to Ray workers; --threads
sets how many threads torch computes with."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from matlab.cli import app
from matlab.util.threads import SHORT_SPIN, SWITCH, WAIT_VARIABLES, machine_busy, policy_environment, worker_environment

PROBE = ("import os, sys; from matlab.cli.common import prepare_process; prepare_process(); import torch; "
         "from matlab.util.threads import apply_thread_policy; apply_thread_policy(int(sys.argv[1]) if len(sys.argv) > 1 "
         "else None); print(os.environ.get('GOMP_SPINCOUNT'), torch.get_num_threads())")


def _probe(environment: dict[str, str], *arguments: str) -> list[str]:
    clean = {name: value for name, value in os.environ.items() if name not in (*WAIT_VARIABLES, SWITCH)}
    done = subprocess.run([sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True,
                          env={**clean, **environment}, check=True, timeout=120)
    return done.stdout.split()


def test_a_short_spin_on_a_busy_machine_torchs_own_at_rest_and_the_users_choice_kept():
    assert policy_environment({}, busy=True) == SHORT_SPIN == {"GOMP_SPINCOUNT": "3000"}
    assert policy_environment({}, busy=False) == {}
    assert policy_environment({SWITCH: "short-spin"}, busy=False) == SHORT_SPIN
    assert policy_environment({"OMP_WAIT_POLICY": "ACTIVE"}, busy=True) == {}
    assert policy_environment({"GOMP_SPINCOUNT": "1000"}, busy=True) == {}
    assert policy_environment({SWITCH: "off"}, busy=True) == {}
    # Ray workers share their node with each other: the short spin unless the user decided.
    assert worker_environment().get("GOMP_SPINCOUNT") in ("3000", os.environ.get("GOMP_SPINCOUNT"))


def test_busy_loops_make_the_machine_busy():
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        import time

        time.sleep(0.5)
        assert machine_busy()
    finally:
        for process in busy:
            process.kill()
            process.wait()


def test_a_command_process_starts_torch_with_the_policy_and_keeps_the_users_choice():
    assert _probe({SWITCH: "short-spin"})[0] == "3000"
    assert _probe({SWITCH: "short-spin", "GOMP_SPINCOUNT": "100"})[0] == "100"
    assert _probe({SWITCH: "short-spin", "OMP_WAIT_POLICY": "PASSIVE"})[0] == "None"  # the user's own choice
    assert _probe({SWITCH: "off"})[0] == "None"
    assert _probe({SWITCH: "short-spin"}, "1") == ["3000", "1"]


def test_threads_option_is_taken_by_the_commands_that_compute(tmp_path, monkeypatch):
    import torch

    text = tmp_path / "t.txt"
    text.write_text("Ada lives in Paris. " * 20)
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(before)))  # restored afterwards
    try:
        result = CliRunner().invoke(app, ["perplexity", "nano", "--file", str(text), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    refused = CliRunner().invoke(app, ["perplexity", "nano", "--file", str(text), "--threads", "0"])
    assert refused.exit_code == 2
