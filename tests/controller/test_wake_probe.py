"""The wake probe's bookkeeping (its figures are for a quiet machine, never asserted here)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from controller.wake_probe import WakeRow, main, measure, suggest, table


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


def test_table_has_a_header_and_one_line_per_row():
    text = table([row(0.0, 1500.0), row(2.0, 20.0)])
    lines = text.splitlines()
    assert len(lines) == 3 and "late p50 us" in lines[0] and "uvloop" in lines[2]


def test_one_short_real_row_is_well_formed():
    r = measure(hz=100.0, spin=0.002, seconds=0.05, loop="asyncio", load_name="none")
    assert r.ticks >= 1 and r.spin_ms == 2.0
    assert all(isinstance(v, str) or math.isfinite(v) for v in dataclasses.asdict(r).values())


def test_the_cli_refuses_a_spin_of_a_period_and_writes_json(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--hz", "100", "--spin-ms", "10"])
    assert "must be less than one period" in capsys.readouterr().err
    out = tmp_path / "wake.json"
    args = ["--hz", "100", "--spin-ms", "1", "--seconds", "0.05", "--loop", "asyncio"]
    assert main([*args, "--load", "none", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["cpus"] and len(data["rows"]) == 1
    assert "asyncio/none/100Hz" in data["suggested_spin_ms"]
