"""The CLI's last two operator paths: a resume signal, and an exit that a stuck thread cannot block.

Both run `python -m controller` in a subprocess (signals and process exit
are what is tested), with the fake robot and policy.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

FAST = ["--policy", "fake", "--device", "cpu", "--status-interval", "0", "--no-uvloop"]


def _wait_for(proc: subprocess.Popen[str], needle: str, timeout: float = 90.0) -> str:
    """Read stderr until a line contains `needle` (generous bound: a shared, busy machine)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {needle!r}:\n{seen[-3000:]}")


def test_sigusr1_asks_the_robot_to_resume_and_never_kills_the_run(tmp_path: Path) -> None:
    stats = tmp_path / "s.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", *FAST, "--duration", "6", "--stats-json", str(stats)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(proc, "phase warming_up -> active")
        proc.send_signal(signal.SIGUSR1)
        seen = _wait_for(proc, "robot resumed")
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "operator resume requested" in seen
    assert proc.returncode == 0, seen + rest
    assert json.loads(stats.read_text())["exit_code"] == 0


def test_a_model_thread_that_never_returns_cannot_keep_the_process_alive(tmp_path: Path) -> None:
    """The VL job sleeps for a day: warm-up fails, the arm is stopped, and the process still exits."""
    config = tmp_path / "c.toml"
    config.write_text("warmup_timeout = 1.0\nstop_timeout = 0.2\n")
    stats = tmp_path / "s.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            *FAST,
            "--config",
            str(config),
            "--policy-option",
            "vl_latency=86400",
            "--stats-json",
            str(stats),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert "run failed: WarmupError" in proc.stderr
    assert "forcing the exit" in proc.stderr
    assert "compute-vl" in proc.stderr  # names the thread that would not finish
    summary = json.loads(stats.read_text())  # written before the forced exit
    assert summary["robot_stop_calls"] == 1
    assert took < 60  # generous: warm-up 1 s + bounded shutdown + 5.8 s grace
