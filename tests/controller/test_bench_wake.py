"""`python -m controller.bench wake`: what it reports and how, never how fast.

The figures (lateness, timer, spin, CPU) are for a quiet machine and are
never asserted; the arithmetic that turns ticks into a row is checked on
synthetic ticks, the choice of a spin on synthetic rows, and a smoke run
checks the table, the JSON and the progress the suite shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import math
import threading

import pytest

from controller.bench import wake
from controller.bench.__main__ import main
from controller.bench.wake import WakeRow, figures, measure, suggest, table
from controller.scheduler import Tick
from tests.controller.cli_util import run_program


def row(spin_ms: float, p99_us: float, **kw) -> WakeRow:
    base = dict(
        loop="uvloop", load="none", hz=100.0, spin_ms=spin_ms, ticks=100, missed=0,
        on_time_fraction=1.0, late_p50_us=1.0, late_p99_us=p99_us, late_max_us=p99_us,
        timer_p99_ms=0.5, timer_p999_ms=0.9, timer_max_ms=1.0, spin_per_tick_ms=spin_ms,
        loop_cpu_fraction=0.1,
    )  # fmt: skip
    base.update(kw)
    return WakeRow(**base)


def test_suggest_picks_the_smallest_spin_meeting_the_goal_per_loop_load_and_rate():
    rows = [
        row(0.0, 1500.0),
        row(1.0, 90.0),
        row(2.0, 20.0),
        row(0.5, 300.0),
        row(2.0, 500.0, load="thread"),
        row(0.0, 50.0, hz=10.0),
    ]
    assert suggest(rows) == {
        "uvloop/none/100Hz": 1.0,
        "uvloop/thread/100Hz": None,
        "uvloop/none/10Hz": 0.0,
    }
    assert suggest(rows, goal=1e-5)["uvloop/none/100Hz"] is None


def test_a_row_is_computed_from_the_ticks_lateness_and_spin():
    period, spin = 0.01, 0.002
    # Tick k: started `late` after its deadline, having spun `spun` on the precise clock.
    plan = [(5e-6, 1.5e-3), (1e-5, 1.0e-3), (2e-3, 0.0), (5e-6, 1.9e-3)]
    ticks = [
        Tick(index=k, deadline=k * period, start=k * period + late, missed_before=0, spin=spun)
        for k, (late, spun) in enumerate(plan, 1)
    ]
    r = figures(
        ticks,
        hz=100.0,
        spin=spin,
        missed=1,
        cpu_fraction=0.123456,
        loop="asyncio",
        load_name="none",
    )
    assert (r.ticks, r.missed, r.spin_ms, r.loop_cpu_fraction) == (4, 1, 2.0, 0.1235)
    # 2 ms late is beyond 10 % of a 10 ms period: three of four on time.
    assert r.on_time_fraction == 0.75
    assert r.late_max_us == pytest.approx(2000.0)
    assert r.late_p50_us == pytest.approx(7.5)
    # The timer was asked for deadline - 2 ms and fired (late - spun + 2 ms) after it:
    # 0.505, 1.01, 4 (the third tick had nothing left to spin) and 0.105 ms.
    assert r.timer_max_ms == pytest.approx(4.0)
    assert r.timer_p99_ms == pytest.approx(1.01 + 0.97 * (4.0 - 1.01), abs=1e-3)
    assert r.spin_per_tick_ms == pytest.approx(1.1)


def test_the_table_is_the_suites_markdown_with_one_line_per_row():
    lines = table([row(0.0, 1500.0), row(2.0, 20.0)]).splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---")
    assert (
        lines[0].startswith("| loop | load | Hz | spin ms |")
        and "late p50 / p99 / max us" in lines[0]
    )
    assert lines[3].startswith("| uvloop | none | 100 | 2 |") and "| 100.00 % |" in lines[3]


def test_a_row_too_short_for_a_wake_up_shows_no_figures():
    empty = figures(
        [], hz=10.0, spin=0.0, missed=0, cpu_fraction=0.5, loop="uvloop", load_name="none"
    )
    assert empty.ticks == 0 and math.isnan(empty.on_time_fraction)
    cells = table([empty]).splitlines()[2].split(" | ")
    assert cells[6:10] == ["-", "-", "-", "-"]  # on time, late, timer, spin/tick
    assert suggest([empty]) == {"uvloop/none/10Hz": None}


def test_the_thread_load_runs_for_the_block_and_stops_after_it():
    before = {t.name for t in threading.enumerate()}
    with wake.load("thread"):
        assert "wake-gil-load" in {t.name for t in threading.enumerate()} - before
    assert "wake-gil-load" not in {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="unknown load"), wake.load("sundial"):
        pass


@pytest.mark.peer  # a process of its own
def test_the_process_load_burns_for_the_block_and_is_reaped_after_it():
    children = []
    real_popen = wake.subprocess.Popen

    def spy(*a, **k):
        children.append(real_popen(*a, **k))
        return children[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wake.subprocess, "Popen", spy)
        with wake.load("process"):
            assert children[0].poll() is None  # burning
    assert children[0].poll() is not None  # killed and reaped


def test_one_short_real_row_is_well_formed():
    r = measure(hz=100.0, spin=0.002, seconds=0.05, loop="asyncio", load_name="none")
    assert r.ticks >= 1 and r.spin_ms == 2.0 and r.load == "none"
    assert all(isinstance(v, str) or math.isfinite(v) for v in dataclasses.asdict(r).values())


def test_the_subcommand_reports_every_row_with_the_suites_json(tmp_path, capsys):
    out = tmp_path / "wake.json"
    argv = [
        "wake", "--seconds", "0.05", "--hz", "100", "--spin-ms", "0", "1",
        "--event-loop", "asyncio", "--load", "none", "thread", "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "| loop | load | Hz | spin ms |" in stdout and "(clock: real)" in stdout
    assert "Smallest spin (ms) with lateness p99 <= 100 us: asyncio/none/100Hz" in stdout
    assert "wake [" in stderr and "4/4 asyncio, load thread, 100 Hz, spin 1 ms" in stderr
    doc = json.loads(out.read_text())
    assert doc["suite"] == "controller.bench" and doc["bench"] == "wake"
    assert doc["command"].startswith("python -m controller.bench wake --seconds 0.05")
    assert dt.datetime.fromisoformat(doc["date_utc"]).tzinfo is not None
    assert doc["machine"]["cpu_model"] and doc["machine"]["cores"] >= 1
    assert {"python", "uvloop"} <= set(doc["versions"])
    assert [(r["load"], r["spin_ms"]) for r in doc["rows"]] == [
        ("none", 0.0), ("none", 1.0), ("thread", 0.0), ("thread", 1.0)
    ]  # fmt: skip
    assert all(r["loop"] == "asyncio" and r["ticks"] >= 1 for r in doc["rows"])
    assert set(doc["suggested_spin_ms"]) == {"asyncio/none/100Hz", "asyncio/thread/100Hz"}
    assert doc["seconds_per_row"] == 0.05 and doc["goal_p99_us"] == 100.0
    assert doc["switch_interval_s"] > 0 and doc["failed_rows"] == 0
    assert doc["table"].count("\n") == 1 + 4


def test_a_failed_row_is_reported_and_the_others_kept(tmp_path, capsys, monkeypatch):
    real = wake.measure

    def flaky(**kw):
        if kw["load_name"] == "thread":
            raise OSError("no thread for you")
        return real(**kw)

    monkeypatch.setattr(wake, "measure", flaky)
    out = tmp_path / "wake.json"
    argv = ["wake", "--seconds", "0.05", "--hz", "100", "--spin-ms", "1", "--event-loop", "asyncio"]
    assert main([*argv, "--load", "none", "thread", "--json", str(out)]) == 1
    assert "| asyncio | thread | 100 | 1 | failed |" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["failed_rows"] == 1 and "no thread for you" in doc["rows"][1]["error"]
    assert doc["suggested_spin_ms"].keys() == {"asyncio/none/100Hz"}


def test_the_default_event_loops_are_those_installed(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    assert main(["wake", "--event-loop", "uvloop"]) == 2
    assert "uvloop is not installed" in capsys.readouterr().err
    parser_args = argparse.Namespace(
        event_loop=None, hz=[10.0], spin_ms=[0.0], load=["none"], seconds=1.0
    )
    assert {lp for lp, *_ in wake.plan(parser_args)} == {"asyncio"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["wake", "--hz", "100", "--spin-ms", "10"], "must be less than one period at 100 Hz"),
        (["wake", "--spin-ms", "-1"], "--spin-ms"),
        (["wake", "--hz", "0"], "--hz"),
        (["wake", "--load", "sundial"], "--load"),
        (["wake", "--seconds", "0"], "--seconds"),
    ],
)
def test_bad_flags_are_one_line_before_any_row_runs(argv, says, capsys, monkeypatch):
    def no_row(**_):
        raise AssertionError("a row ran before the flags were checked")

    monkeypatch.setattr(wake, "measure", no_row)
    code, _, err = run_program(main, capsys, *argv)
    assert code == 2
    err = err.strip()
    assert err.count("\n") == 0 and says in err, err
