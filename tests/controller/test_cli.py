"""The command line: one clear line and exit 2 for bad input; a real short run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.controller.cli_util import run_cli


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--hz", "fast"], "--hz: expected a number, got 'fast'"),
        (["--hz", "-5"], "--hz: must be a number in [1, 1000] Hz, got '-5'"),
        (["--max-feature-age", "0"], "--max-feature-age: must be a number in (0, 10] s, got '0'"),
        (["--limit-mode", "yolo"], "invalid choice: 'yolo'"),
        (["--robot", "nosuch"], "unknown robot driver 'nosuch' (accepted: "),
        (["--camera", "nosuch://x"], "unknown camera driver 'nosuch'"),
        (["--policy", "nosuch"], "unknown policy 'nosuch' (accepted: "),
        (["--robot-option", "rate_hz"], "expected KEY=VALUE"),
        (["--robot-option", "rate_hz=-3"], "rate_hz must be positive"),
        (["--robot-option", "colour=red"], "unknown option 'colour'"),
        (["--device", "tpu"], "--device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["--config", "/nonexistent.toml"], "does not exist"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, _, err = (
        run_cli(capsys, *argv, "--policy", "fake")
        if "--policy" not in argv
        else run_cli(capsys, *argv)
    )
    assert code == 2
    assert needle in err
    assert err.strip().count("\n") == 0, err


def test_bad_config_file_values_are_named(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('hz = 10\n[safety]\nmax_state_age = "soon"\n')
    code, _, err = run_cli(capsys, "--config", str(cfg), "--policy", "fake")
    assert code == 2 and f"{cfg}: key 'safety.max_state_age': expected a number, got 'soon'" in err
    cfg.write_text("hz = [\n")
    code, _, err = run_cli(capsys, "--config", str(cfg))
    assert code == 2 and "not valid TOML" in err
    cfg.write_text("speed = 3\n")
    code, _, err = run_cli(capsys, "--config", str(cfg))
    assert code == 2 and "unknown key 'speed' (accepted: " in err


def test_list_drivers_names_builtins(capsys):
    code, out, _ = run_cli(capsys, "--list-drivers")
    assert code == 0
    for name in (
        "robot.fake",
        "camera.fake",
        "robot.ur5",
        "camera.whip",
        "camera.whep",
        "fake",
        "qwen-vla",
    ):
        assert name in out


def test_config_file_with_flag_overrides(capsys, tmp_path):
    cfg = tmp_path / "run.toml"
    stats = tmp_path / "s.json"
    cfg.write_text(
        'hz = 20\nduration = 1.5\ndevice = "cpu"\nstatus_interval = 0\n'
        f'stats_json = "{stats}"\n'
        '[robot]\ndriver = "fake"\nrate_hz = 250\n'
        '[[cameras]]\nspec = "fake://front"\nfps = 15\n'
        '[[cameras]]\nspec = "fake://wrist"\n'
        '[policy]\nname = "fake"\nvl_latency = 0.1\naction_latency = 0.005\n'
    )
    code, out, err = run_cli(capsys, "--config", str(cfg), "--hz", "10")  # in this process
    assert code == 0, err[-3000:]
    s = json.loads(stats.read_text())
    assert s["hz_target"] == 10.0
    assert s["cameras"] == ["fake://front", "fake://wrist"]
    assert s["actions_sent"] >= 10
    assert s["feature_age_at_use_ms"]["count"] == s["actions_sent"]
    assert "controller summary" in out


@pytest.mark.peer  # a process of its own, on real time
def test_sigint_stops_the_run_cleanly(tmp_path):
    import signal
    import time

    stats = tmp_path / "s.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller",
            "--policy",
            "fake",
            "--device",
            "cpu",
            "--stats-json",
            str(stats),
            "--status-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        err = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            err += line
            if "phase warming_up -> active" in line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err + rest
    s = json.loads(stats.read_text())
    assert s["robot_stop_calls"] == 1
    assert "stop requested: signal SIGINT" in rest
