"""Bad input at the CLI boundary: one line and exit 2; a failing run: one line, exit 1,
the summary and the stats file still produced; signals honoured in every phase; SIGUSR1
asks for a resume; a thread that never returns cannot keep the process alive."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import from_mapping
from controller.errors import ConfigError
from tests.controller.cli_util import one_error_line, run_cli

FAST = ["--policy", "fake", "--device", "cpu", "--status-interval", "0", "--no-uvloop"]


# -- finding 3: the default policy applies to policy options given alone --------------


@pytest.mark.parametrize(
    ("argv", "toml", "needle"),
    [
        (
            ["--checkpoint", "/nonexistent/ckpt"],
            None,
            "checkpoint /nonexistent/ckpt: no such directory",
        ),
        (["--policy-option", "colour=red"], None, "qwen-vla: unknown option 'colour'"),
        (["--vl-model", "x", "--policy-option", "colour=red"], None, "qwen-vla: unknown option"),
        (
            [],
            '[policy]\ncheckpoint = "/nonexistent/ckpt"\n',
            "/nonexistent/ckpt: no such directory",
        ),
    ],
)
def test_policy_options_without_a_name_go_to_the_default_policy(
    capsys, tmp_path, argv, toml, needle
):
    if toml is not None:
        cfg = tmp_path / "c.toml"
        cfg.write_text(toml)
        argv = [*argv, "--config", str(cfg)]
    code, _, err = run_cli(capsys, *argv)
    line = one_error_line(err)
    assert code == 2
    assert "<member" not in line
    assert needle in line


def test_naming_another_policy_drops_the_default_policys_table(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    stats = tmp_path / "s.json"
    cfg.write_text('[policy]\ncheckpoint = "/nonexistent/ckpt"\n')
    code, _, err = run_cli(
        capsys, "--config", str(cfg), *FAST, "--duration", "0.3", "--stats-json", str(stats)
    )
    assert code == 0, err
    assert json.loads(stats.read_text())["policy"] == "fake"


# -- finding 4: wrong types, unreadable files, devices ---------------------------------


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("robot = 5\n", "robot must be a table or a name string, got 5"),
        ("policy = 5\n", "policy must be a table or a name string, got 5"),
        ("safety = 5\n", "safety must be a table, got 5"),
        ("cameras = 5\n", "cameras must be a non-empty array"),
        ("sensors = 5\n", "sensors must be an array"),
        ("[robot]\ndriver = 5\n", 'needs driver = "NAME"'),
        ('device = "cuda:abc"\n', "device must be auto, cpu, cuda or cuda:N, got 'cuda:abc'"),
        ('device = "cuda:-1"\n', "device must be auto, cpu, cuda or cuda:N"),
        ('[policy]\nname = "fake"\namplitude = "x"\n', "fake policy: option 'amplitude'"),
        ('[policy]\nname = "fake"\nfrequency = [1]\n', "fake policy: option 'frequency'"),
        ('[policy]\nname = "fake"\nseed = "x"\n', "fake policy: option 'seed'"),
        ('[policy]\nname = "fake"\nseed = -1\n', "fake policy: seed must be an integer >= 0"),
        ('[policy]\nname = "fake"\nhorizon = true\n', "option 'horizon': expected an integer"),
    ],
)
def test_wrong_types_in_the_config_file_are_one_line(capsys, tmp_path, toml, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    # A duration, so that code accepting the value runs briefly instead of forever.
    code, _, err = run_cli(capsys, "--config", str(cfg), "--duration", "0.5")
    assert code == 2
    assert needle in one_error_line(err)


def test_config_file_that_is_not_utf8_is_named(capsys, tmp_path):
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('instruction = "caf\u00e9"\n'.encode("latin-1"))
    code, _, err = run_cli(capsys, "--config", str(cfg))
    assert code == 2
    assert "is not UTF-8 text (byte 18" in one_error_line(err)


@pytest.mark.parametrize("path", ["/dev/null", "dir"])
def test_config_that_is_not_a_regular_file_is_refused(capsys, tmp_path, path):
    if path == "dir":
        path = str(tmp_path)
    code, _, err = run_cli(capsys, "--config", path, *FAST, "--duration", "0.5")
    assert code == 2
    line = one_error_line(err)
    assert repr(path) in line and ("not a regular file" in line or "Is a directory" in line)


def _limited_memory() -> None:
    # 1 GiB of address space: code that reads /dev/zero to the end fails fast
    # with MemoryError here instead of taking the shared machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
@pytest.mark.peer  # a process of its own, on real time
def test_endless_or_blocking_config_is_refused_without_reading(tmp_path, kind):
    path = kind
    if kind == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)  # a blocking open for reading would wait for a writer forever
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limited_memory,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"config file {path!r} is not a regular file" in one_error_line(proc.stderr)


def test_config_file_over_one_mib_is_refused(capsys, tmp_path):
    cfg = tmp_path / "big.toml"
    cfg.write_text("# padding\n" * 120_000 + "hz = 10\n")
    code, _, err = run_cli(capsys, "--config", str(cfg), *FAST, "--duration", "0.5")
    assert code == 2
    assert "is larger than 1048576 bytes" in one_error_line(err)


def test_duration_beyond_the_bound_is_refused_before_running():
    # Checked on the mapping: on code without the bound the CLI would run for 3 years.
    with pytest.raises(
        ConfigError, match=r"duration must be a number in \(0, 1e\+07\] s, got 100000000.0"
    ):
        from_mapping({"duration": 1e8})
    assert from_mapping({"duration": 1e7}).duration == 1e7


def test_device_index_syntax_is_checked_at_config_time():
    for bad in ("cuda:abc", "cuda:", "cuda:1:2", "cuda0", "CUDA", "gpu"):
        with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
            from_mapping({"device": bad})
    for good in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert from_mapping({"device": good}).device == good


def test_absent_cuda_device_is_one_line_and_exit_2(capsys, tmp_path):
    # cuda:99 is absent everywhere: no GPU at all, or fewer than 100 of them.
    stats = tmp_path / "s.json"
    argv = [*FAST, "--duration", "0.3", "--stats-json", str(stats)]
    code, _, err = run_cli(capsys, *[a if a != "cpu" else "cuda:99" for a in argv])
    line = one_error_line(err)
    assert code == 2
    assert "device 'cuda:99' asked for, but torch sees" in line
    assert json.loads(stats.read_text())["actions_sent"] == 0


def test_cuda_without_a_gpu_is_one_line_and_exit_2(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = [*FAST, "--duration", "0.5"]
    code, _, err = run_cli(capsys, *[a if a != "cpu" else "cuda" for a in argv])
    assert code == 2
    assert "device 'cuda' asked for, but torch sees no CUDA device" in one_error_line(err)


# -- finding 8: non-finite numbers in any float flag or TOML value ---------------------

FLOAT_FLAGS = [
    "--hz",
    "--max-feature-age",
    "--max-state-age",
    "--duration",
    "--status-interval",
    "--spin-ms",
    "--vl-max-hz",
]


@pytest.mark.parametrize("flag", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "infinity"])
def test_non_finite_float_flags_are_refused(capsys, flag, value):
    code, _, err = run_cli(capsys, *FAST, flag, value)
    assert code == 2
    assert f"argument {flag}: expected" in one_error_line(err)


@pytest.mark.parametrize(
    "key",
    [
        "hz",
        "duration",
        "status_interval",
        "spin_ms",
        "vl_max_hz",
        "warmup_timeout",
        "stop_timeout",
        "action_timeout_ms",
        "safety.max_feature_age",
        "safety.max_state_age",
    ],
)
def test_non_finite_config_values_are_refused(capsys, tmp_path, key):
    cfg = tmp_path / "c.toml"
    table, _, name = key.rpartition(".")
    cfg.write_text(f"[{table}]\n{name} = nan\n" if table else f"{name} = inf\n")
    # No flag for the key under test (flags override the file), a short duration otherwise.
    flags = ["--policy", "fake", "--device", "cpu", "--no-uvloop"]
    flags += [] if key == "duration" else ["--duration", "0.5"]
    code, _, err = run_cli(capsys, "--config", str(cfg), *flags)
    assert code == 2
    assert "expected a finite number, got" in one_error_line(err)


# -- finding 5: whatever the run raises is one line, exit 1, summary and stats ---------


class Boom(Exception):
    """An exception type no list of known errors contains."""


@pytest.mark.parametrize(
    ("target", "phase"),
    [
        ("policies.fake.FakePolicy.load", "loading"),
        ("policies.fake.FakePolicy.act", "warm-up"),
        ("policies.fake.FakePolicy.encode_vl", "warm-up"),
    ],
)
def test_any_exception_from_the_run_is_one_line_with_summary_and_stats(
    capsys, tmp_path, monkeypatch, target, phase
):
    def boom(*_args, **_kwargs):
        raise Boom(f"injected in {phase}\nsecond line of the message")

    monkeypatch.setattr(target, boom)
    stats = tmp_path / "s.json"
    # Two failures in a row end the run (the default 10 back off for 13 s of real time).
    config = tmp_path / "c.toml"
    config.write_text("max_consecutive_failures = 2\n")
    code, out, err = run_cli(
        capsys,
        *FAST,
        "--config",
        str(config),
        "--policy-option",
        "vl_latency=0.01",
        "--duration",
        "2",
        "--stats-json",
        str(stats),
        "--log-level",
        "ERROR",
    )
    assert code == 1, err
    failed = [line for line in err.splitlines() if "run failed" in line]
    assert len(failed) == 1, err
    # Raised as is, or wrapped by the runtime after repeated VL failures: either
    # way the type and both lines of the message end up on the one line.
    assert "run failed: " in failed[0] and "Boom" in failed[0]
    assert f"injected in {phase}" in failed[0] and "second line of the message" in failed[0]
    assert "Traceback" not in err
    assert "controller summary" in out
    summary = json.loads(stats.read_text())
    assert summary["exit_code"] == 1
    assert summary["robot_stop_calls"] >= 1
    assert summary["actions_sent"] == 0


def test_plugin_constructor_raising_anything_is_one_line(capsys, monkeypatch):
    def bad_options(_cls, _options):
        raise KeyError("the plugin did not expect this")

    monkeypatch.setattr("policies.fake.FakePolicy.from_options", classmethod(bad_options))
    code, _, err = run_cli(capsys, *FAST, "--duration", "0.5")
    assert code == 2
    assert "cannot build the drivers and policy: KeyError" in one_error_line(err)


# -- finding 7: values that would switch an interlock off ------------------------------
# A flag's own range is checked as it is parsed, naming the flag; a limit that depends on
# another setting (spin < one period) is checked on the merged settings, naming "flags".


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--max-feature-age", "1e308"],
            "argument --max-feature-age: must be a number in (0, 10] s, got '1e308'",
        ),
        (
            ["--max-state-age", "1e308"],
            "argument --max-state-age: must be a number in (0, 1] s, got '1e308'",
        ),
        (["--hz", "1e-300"], "argument --hz: must be a number in [1, 1000] Hz, got '1e-300'"),
        (
            ["--vl-max-hz", "1e-300"],
            "argument --vl-max-hz: must be 0 or a number in [0.1, 1000] Hz, got '1e-300'",
        ),
        (["--status-interval", "1e9"], "argument --status-interval: must be 0 or a number in"),
        (["--spin", "0.15"], "flags: spin must be less than one control period (0.1 s), got 0.15"),
        (["--spin-ms", "150"], "flags: spin must be less than one control period (0.1 s)"),
        (["--spin-ms", "1000"], "argument --spin-ms: must be a number in [0, 1000) ms"),
        (["--duration", "1e8"], "argument --duration: must be a number in (0, 1e+07] s"),
    ],
)
def test_flags_that_would_switch_an_interlock_off_are_refused(capsys, argv, needle):
    duration = [] if "--duration" in argv else ["--duration", "0.5"]
    code, _, err = run_cli(capsys, *FAST, *duration, *argv)
    assert code == 2
    assert needle in one_error_line(err)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("warmup_timeout = 1e9\n", "warmup_timeout must be a number in"),
        ("stop_timeout = 1e9\n", "stop_timeout must be a number in"),
        (
            "action_timeout_ms = 1e9\n",
            "action_timeout_ms must be a number in [0.1, 10000] ms, got 1000000000.0",
        ),
        ("action_timeout_ms = 0.01\n", "action_timeout_ms must be a number in [0.1, 10000] ms"),
        ("action_timeout = 1e9\n", "action_timeout must be a number in [0.0001, 10] s"),
        ("[safety]\nmax_state_age = 1e308\n", "safety.max_state_age must be a number in (0, 1] s"),
    ],
)
def test_config_values_that_would_switch_an_interlock_off_are_named(capsys, tmp_path, toml, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    code, _, err = run_cli(capsys, "--config", str(cfg), *FAST, "--duration", "0.5")
    assert code == 2
    assert f"{cfg}: {needle}" in one_error_line(err)


# -- finding 6: SIGINT, SIGTERM and SIGHUP in every phase ------------------------------
# These run `python -m controller` in a subprocess: signals and the process's exit are
# what is tested.

ACTIVE = "phase warming_up -> active"


def _argv(stats: Path, *extra: str, main: Sequence[str] = ("-m", "controller")) -> list[str]:
    """A command line that runs the controller on the fakes and writes its stats to `stats`."""
    return [sys.executable, *main, *FAST, "--stats-json", str(stats), *extra]


def _default_stop_signals() -> None:
    """In the child before exec: SIGINT, SIGTERM and SIGHUP at their defaults.

    Why: a test run started under `nohup` or as a background job inherits
    ignored SIGHUP (and SIGINT), and the controller rightly leaves a signal
    that was ignored at start ignored; these tests are about a terminal's
    signals reaching a controller started normally, whatever ran pytest.
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def _running(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """The controller in a subprocess, and where its stats go; killed whatever the test does."""
    stats = tmp_path / "s.json"
    proc = subprocess.Popen(
        _argv(stats, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_stop_signals,
    )
    try:
        yield proc, stats
    finally:
        proc.kill()


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


def _signal_on(proc: subprocess.Popen[str], needle: str, sig: signal.Signals) -> str:
    """Send `sig` once stderr shows `needle`; the stderr read so far."""
    seen = _wait_for(proc, needle)
    proc.send_signal(sig)
    return seen


@pytest.mark.peer  # a process of its own, on real time
def test_sighup_mid_run_stops_the_robot_and_still_reports(tmp_path):
    with _running(tmp_path) as (proc, stats):
        seen = _signal_on(proc, ACTIVE, signal.SIGHUP)
        out, rest = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGHUP, seen + rest
    assert "stop requested: signal SIGHUP" in rest
    assert "controller summary" in out
    summary = json.loads(stats.read_text())
    assert summary["robot_stop_calls"] >= 1
    assert summary["signals"] == ["SIGHUP"]
    assert summary["exit_code"] == 129


@pytest.mark.peer  # a process of its own, on real time
def test_sigterm_while_connecting_stops_at_once(tmp_path):
    with _running(tmp_path, "--robot-option", "connect_delay=30") as (proc, stats):
        seen = _wait_for(proc, "compute executor on")  # the robot connects next
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    assert proc.returncode == 0, seen + rest
    assert took < 15, f"{took:.1f} s after SIGTERM (the connect takes 30 s)"
    assert "stop requested: signal SIGTERM" in rest
    assert "controller summary" in out
    summary = json.loads(stats.read_text())
    assert summary["robot_stop_calls"] >= 1
    assert summary["actions_sent"] == 0


@pytest.mark.peer  # a process of its own, on real time
def test_second_signal_cancels_a_hanging_stop_and_exits_128_plus_n(tmp_path):
    with _running(tmp_path, "--robot-option", "stop_hangs=true") as (proc, stats):
        seen = _signal_on(proc, ACTIVE, signal.SIGINT)
        seen += _signal_on(proc, "stop requested: signal SIGINT", signal.SIGINT)
        out, rest = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, seen + rest
    assert "second signal SIGINT: cancelling" in rest
    assert "controller summary" in out
    summary = json.loads(stats.read_text())
    assert summary["signals"] == ["SIGINT", "SIGINT"]
    assert summary["robot_stop_calls"] >= 1


SIGHUP_DURING_BUILD = """
import os, signal, sys
import controller.cli as cli

real_build = cli.build

def build(run):
    os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes while the policy loads
    return real_build(run)

cli.build = build
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.peer  # a process of its own, on real time
def test_sighup_before_the_loop_starts_is_recorded_and_nothing_connects(tmp_path):
    stats = tmp_path / "s.json"
    proc = subprocess.run(
        _argv(stats, main=("-c", SIGHUP_DURING_BUILD)),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_default_stop_signals,
    )
    assert proc.returncode == 128 + signal.SIGHUP, proc.stderr[-3000:]
    assert "SIGHUP before the run started: not connecting" in proc.stderr
    summary = json.loads(stats.read_text())
    assert summary["robot_stop_calls"] == 0 and summary["signals"] == ["SIGHUP"]


def test_signals_caught_by_main_module_before_the_cli_loads_are_honoured(capsys, tmp_path):
    stats = tmp_path / "s.json"
    code = main([*FAST, "--stats-json", str(stats)], early_signals=[signal.SIGTERM])
    assert code == 0
    assert "SIGTERM before the run started: not connecting" in capsys.readouterr().err
    assert json.loads(stats.read_text())["robot_stop_calls"] == 0


def test_handlers_are_restored_after_an_in_process_run(capsys):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    run_cli(capsys, *FAST, "--duration", "0.3")
    run_cli(capsys, "--hz", "fast")  # argparse exits through SystemExit
    assert {sig: signal.getsignal(sig) for sig in before} == before


# -- the operator's last two paths: a resume signal, an exit a stuck thread cannot block


@pytest.mark.peer  # a process of its own, on real time
def test_sigusr1_asks_the_robot_to_resume_and_never_kills_the_run(tmp_path: Path) -> None:
    with _running(tmp_path, "--duration", "6") as (proc, stats):
        seen = _signal_on(proc, ACTIVE, signal.SIGUSR1)
        seen += _wait_for(proc, "robot resumed")
        _, rest = proc.communicate(timeout=60)
    assert "operator resume requested" in seen
    assert proc.returncode == 0, seen + rest
    assert json.loads(stats.read_text())["exit_code"] == 0


@pytest.mark.peer  # a process of its own, on real time
def test_a_model_thread_that_never_returns_cannot_keep_the_process_alive(tmp_path: Path) -> None:
    """The VL job sleeps for a day: warm-up fails, the arm is stopped, and the process still exits."""
    config = tmp_path / "c.toml"
    config.write_text("warmup_timeout = 1.0\nstop_timeout = 0.2\n")
    stats = tmp_path / "s.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        _argv(stats, "--config", str(config), "--policy-option", "vl_latency=86400"),
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
