"""The benchmark suite (`python -m controller.bench`): what it reports and how, never how fast.

The smoke runs use tiny durations and check the table, the JSON's structure
and that the figures were measured (counts above zero, percentiles in
order). Figures that follow from the schedule alone are checked exactly on
the virtual clock (seed-table's virtual rows); the lateness estimators are
checked on synthetic stamps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pickle
import subprocess
import sys
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from controller.bench import loop as loop_bench
from controller.bench.__main__ import main
from controller.bench.common import Progress, Report, event_loops
from controller.bench.probe import ActTap, Probe, TickStamp, lateness, tick_figures
from controller.errors import ConfigError
from controller.runtime import ControllerConfig
from tests.controller.cli_util import run_program

ROOT = Path(__file__).resolve().parents[2]
PERIOD = 0.01


def _ordered(s: dict) -> bool:
    return s["n"] > 0 and 0 <= s["p50"] <= s["p99"] <= s["max"]


def _check_document(doc: dict, bench: str, command: str) -> None:
    assert doc["suite"] == "controller.bench" and doc["bench"] == bench
    assert doc["command"].startswith(command), doc["command"]
    assert dt.datetime.fromisoformat(doc["date_utc"]).tzinfo is not None
    machine = doc["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1 and "gpu" in machine
    assert {"python", "torch", "transformers", "uvloop", "aiortc"} <= set(doc["versions"])
    assert doc["versions"]["python"].count(".") == 2
    assert doc["table"].startswith("| ") and doc["rows"]


# -- the controller's modes, found at run time --------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    hz: float = 10.0
    worker: Literal["process", "thread"] = "process"
    wake: Literal["sleep", "spin", "precise"] = "precise"
    precise_clock: bool = True
    vl_mode: Literal["async", "sync"] = "async"
    note: str = "not a mode"
    limit: float | None = None


def test_every_literal_or_bool_setting_is_a_mode_axis_with_its_default_first() -> None:
    axes = loop_bench.mode_axes(_Settings)
    assert axes == {
        "worker": ("process", "thread"),
        "wake": ("precise", "sleep", "spin"),
        "precise_clock": (True, False),
    }
    combos = loop_bench.variants(axes, {})
    assert len(combos) == 2 * 3 * 2
    assert len({tuple(c.items()) for c in combos}) == len(combos)
    assert combos[0] == {"worker": "process", "wake": "precise", "precise_clock": True}
    # --modes narrows an axis or adds another setting as one.
    narrowed = loop_bench.variants(axes, {"wake": ["spin"], "hz": [10.0, 20.0]})
    assert len(narrowed) == 2 * 1 * 2 * 2


@dataclasses.dataclass(frozen=True)
class _PartlyTyped:
    worker: Literal["process", "thread"] = "thread"
    clock: OnlyForTypeCheckers | None = None  # type: ignore[name-defined]  # noqa: F821


def test_a_type_that_cannot_be_resolved_does_not_hide_the_other_modes() -> None:
    assert loop_bench.mode_axes(_PartlyTyped) == {"worker": ("thread", "process")}


def test_the_controllers_own_mode_fields_are_all_axes() -> None:
    hints = typing.get_type_hints(ControllerConfig)
    modes = {
        f.name
        for f in dataclasses.fields(ControllerConfig)
        if typing.get_origin(hints[f.name]) is Literal or hints[f.name] is bool
    }
    assert set(loop_bench.mode_axes()) == modes - {"vl_mode"}


def test_a_new_mode_adds_rows_without_an_edit(monkeypatch) -> None:
    monkeypatch.setattr(
        loop_bench, "mode_axes", lambda *a: {"spin": (0.0, 0.002), "status_interval": (0.0, 1.0)}
    )
    parser = _loop_parser()
    args = parser.parse_args(["--policy", "fake"])
    rows = loop_bench.plan(args)
    per_case = 1 + 4  # the note's loop, then every combination of the two axes
    assert len(rows) == 2 * 3 * per_case  # 10 and 100 Hz, three scenarios
    modes = [r.modes for r, _ in rows if r.design == "controller"]
    assert {"spin": 0.002, "status_interval": 1.0} in modes
    for row, config in rows:
        assert config.controller.hz == row.hz
        if row.design == "controller":
            assert config.controller.spin == row.modes["spin"]


def _loop_parser():
    from controller.bench.common import OneLineParser

    p = OneLineParser(prog="loop")
    loop_bench.add_arguments(p)
    return p


# -- measured outside the loop: the estimators on synthetic stamps ------------------------


def test_lateness_on_the_grid_takes_the_most_punctual_tick_as_zero() -> None:
    offsets = [2e-4, 1e-4, 3e-3, 1e-4]
    ticks = [TickStamp(100.0 + k * PERIOD + d, k) for k, d in enumerate(offsets)]
    np.testing.assert_allclose(lateness(ticks, PERIOD, "grid"), [1e-4, 0, 2.9e-3, 0], atol=1e-12)


def test_skipped_deadlines_and_drift_are_missed_ticks() -> None:
    skipped = [TickStamp(50.0 + k * PERIOD, k) for k in (0, 1, 3, 4)]
    fig = tick_figures(skipped, PERIOD, "grid")
    assert fig["ticks"] == 4 and fig["missed_ticks"] == 1
    assert fig["ticks_on_time"] == 4 and fig["ticks_judged"] == 5
    # A relative loop 1 % slow: never late by its own pacing, yet it misses a slot per 100.
    drifting = [TickStamp(k * PERIOD * 1.01, None) for k in range(201)]
    fig = tick_figures(drifting, PERIOD, "interval")
    np.testing.assert_allclose(fig["lateness_ms"]["max"], 0, atol=1e-9)
    assert fig["missed_ticks"] == 2 and fig["lateness_ms"]["n"] == 200


def test_overhead_is_tick_to_command_minus_the_act_call() -> None:
    probe = Probe()
    for k in range(3):
        probe.ticks.append(TickStamp(k * PERIOD, k))
        probe.act_span(k * PERIOD + 1e-4, k * PERIOD + 6e-4)
        probe.ticks[-1].command = k * PERIOD + 8e-4
        probe.ticks[-1].act = probe.acts[-1]
    probe.ticks.append(TickStamp(3 * PERIOD, 3))  # a hold: no command
    fig = tick_figures(probe.ticks, PERIOD, "grid")
    assert fig["commands"] == 3 and fig["ticks_without_command"] == 1
    np.testing.assert_allclose(fig["overhead_us"]["p50"], 300, atol=1e-6)
    np.testing.assert_allclose(fig["tick_to_command_ms"]["max"], 0.8, atol=1e-9)


def test_a_command_is_matched_with_the_act_started_in_its_own_tick() -> None:
    probe = Probe()
    probe.act_span(0.0, 0.001)  # the warm-up's act, before any tick
    probe.commanded()  # a command outside any tick is not a tick's
    probe.tick(0)
    probe.commanded()
    assert probe.ticks[0].command is not None and probe.ticks[0].act is None


def test_the_act_tap_pickles_as_the_policy_it_wraps() -> None:
    from policies.fake import FakePolicy

    tap = ActTap(FakePolicy(vl_latency=0, action_latency=0), Probe())
    assert type(pickle.loads(pickle.dumps(tap))) is FakePolicy


def test_progress_off_a_terminal_writes_a_few_lines(capsys) -> None:
    progress = Progress(1000, "what")
    for i in range(1000):
        progress.step("same label" if i < 999 else "last")
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert 10 <= len(lines) <= 13 and lines[-1] == "what: done"
    assert lines[-2].startswith("what [") and lines[-2].endswith("1000/1000 last")


def test_failed_rows_are_counted_on_the_progress_line_and_named_in_the_notes(capsys) -> None:
    rows = [{"n": 1}, {"n": 2, "error": "ValueError: bad"}, {"n": 3, "error": "OSError: gone"}]
    Progress(3, "what").finish(rows)
    Progress(1, "what").finish(rows[:1])
    assert capsys.readouterr().err.splitlines() == ["what: 3 rows, 2 failed", "what: 1 rows"]
    report = Report("b", "t", [], rows)
    report.note_failures(lambda r: f"row {r['n']}")
    assert report.notes == ["Failed rows: row 2: ValueError: bad; row 3: OSError: gone"]
    assert report.extra["failed_rows"] == 2
    clean = Report("b", "t", [], rows[:1])
    clean.note_failures(lambda r: "unused")
    assert clean.notes == [] and clean.extra["failed_rows"] == 0


def test_uvloop_named_but_missing_is_refused_and_the_default_falls_back(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    assert event_loops(None, default=["uvloop", "asyncio"]) == ["asyncio"]
    assert event_loops(["asyncio"], default=["uvloop"]) == ["asyncio"]
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loops(["asyncio", "uvloop"], default=["uvloop"])


# -- smoke runs ----------------------------------------------------------------------------


def test_loop_smoke_measures_both_loops_side_by_side(tiny_cache, tmp_path, capsys) -> None:
    out = tmp_path / "loop.json"
    argv = [
        "loop", "--seconds", "0.3", "--hz", "100", "--scenario", "saturated", "slow-encoder",
        "--encoder-ms", "30", "--variants", "default", "--cache-dir", str(tiny_cache),
        "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "| Hz | scenario | loop | design |" in stdout and "note's loop" in stdout
    assert "loop [" in stderr and "4/4" in stderr  # the progress line, one per row
    doc = json.loads(out.read_text())
    _check_document(doc, "loop", "python -m controller.bench loop --seconds 0.3")
    assert doc["clock"] == "real" and "mode_axes" in doc
    rows = doc["rows"]
    assert [(r["scenario"], r["design"]) for r in rows] == [
        ("saturated", "note"),
        ("saturated", "controller"),
        ("slow-encoder", "note"),
        ("slow-encoder", "controller"),
    ]
    for r in rows:
        assert "error" not in r, r
        assert r["ticks"] > 1 and r["commands"] > 0 and r["vl_encodes"] > 0
        assert _ordered(r["lateness_ms"]) and _ordered(r["tick_to_command_ms"])
        assert _ordered(r["act_ms"]) and r["overhead_us"]["n"] > 0
        assert r["ticks_on_time"] <= r["ticks_judged"]
        assert r["lateness_ms"]["p50"] >= 0 and r["missed_ticks"] >= 0
    controller_rows = [r for r in rows if r["design"] == "controller"]
    assert all(r["note_p99_over_this_p99"] is not None for r in controller_rows)
    assert all(r["action_timeouts"] >= 0 for r in controller_rows)
    # The note's queue is consumed: every feature serves exactly one tick.
    for r in rows:
        if r["design"] == "note":
            assert list(r["reuse_histogram"]) == ["1"]


def test_loop_rows_say_whether_rt_priority_was_granted(
    tiny_cache, tmp_path, capsys, monkeypatch
) -> None:
    """A row that asked for SCHED_FIFO and was refused ran under the normal scheduler: said so."""
    from tests.controller.test_realtime import FakeSched

    monkeypatch.setattr("controller.runtime.os_sched", lambda: FakeSched(refuse=True, limit=0))
    out = tmp_path / "loop.json"
    argv = [
        "loop", "--seconds", "0.3", "--hz", "100", "--scenario", "idle", "--design",
        "controller", "--modes", "vl_worker=thread", "--modes", "rt_priority=0,30", "--cache-dir", str(tiny_cache),
        "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    stdout, _ = capsys.readouterr()
    rows = json.loads(out.read_text())["rows"]
    assert [r["modes"]["rt_priority"] for r in rows] == [0, 30]
    assert [r["realtime"]["granted"] for r in rows] == [False, False]
    assert rows[1]["realtime"]["requested"] == 30
    assert "rt_priority was REFUSED in 1 row(s)" in stdout and "CAP_SYS_NICE" in stdout


def test_seed_table_on_virtual_time_reproduces_the_notes_arithmetic(tmp_path, capsys) -> None:
    out = tmp_path / "seed.json"
    argv = ["seed-table", "--clock", "virtual", "--virtual-seconds", "30", "--json", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "(clock: virtual)" in stdout and "| virtual | synchronous" in stdout
    doc = json.loads(out.read_text())
    _check_document(doc, "seed-table", "python -m controller.bench seed-table")
    sync, async_ = doc["rows"]
    assert (sync["mode"], async_["mode"]) == ("sync", "async")
    # Synchronous: 300 + 25 ms per step on 100 ms deadlines -> every fourth deadline.
    assert sync["control_rate_hz"] == pytest.approx(2.5, abs=0.05)
    assert sync["step_ms"]["p50"] == pytest.approx(325)
    assert sync["reuse_histogram"] == {"1": sync["actions"]}
    assert sync["missed_ticks"] == pytest.approx(3 * sync["ticks"], abs=3)
    # Asynchronous: the rate held, each 300 ms feature serving three 100 ms ticks.
    assert async_["control_rate_hz"] == pytest.approx(10, abs=0.05)
    assert async_["missed_ticks"] == 0
    assert async_["action_latency_ms"]["p50"] == pytest.approx(25)
    reuse = {int(k): v for k, v in async_["reuse_histogram"].items()}
    assert reuse[3] >= sum(reuse.values()) - 2
    ages = async_["feature_age_ms"]
    assert 300 <= ages["p50"] <= ages["p99"] <= 2 * 300 + 100


def test_seed_table_real_rows_include_the_notes_loop(tiny_cache, tmp_path, capsys) -> None:
    out = tmp_path / "seed.json"
    argv = [
        "seed-table", "--clock", "real", "--seconds", "0.5", "--encoder-ms", "50",
        "--cameras", "1", "--cache-dir", str(tiny_cache), "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "(clock: real)" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["sync", "async", "note"]
    for r in rows:
        assert "error" not in r, r
        assert r["ticks"] > 0 and r["actions"] > 0 and r["vl_encodes"] > 0
        assert _ordered(r["feature_age_ms"]) and _ordered(r["action_latency_ms"])
        assert r["control_rate_hz"] > 0
    assert list(rows[2]["reuse_histogram"]) == ["1"]  # the note's queue: one tick per feature


def test_vl_and_act_report_split_latencies(tiny_cache, tmp_path, capsys) -> None:
    out = tmp_path / "vl.json"
    argv = [
        "vl", "--cache-dir", str(tiny_cache), "--images", "1", "2", "--iters", "2",
        "--warmup", "0", "--size", "96x128", "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    assert "| images | tokens |" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    _check_document(doc, "vl", "python -m controller.bench vl")
    assert [r["images"] for r in doc["rows"]] == [1, 2]
    for r in doc["rows"]:
        assert r["tokens"] > 0
        for part in ("preprocess_ms", "forward_ms", "total_ms"):
            assert r[part]["n"] == 2 and _ordered(r[part]) and r[part]["p50"] > 0
    out = tmp_path / "act.json"
    argv = ["act", "--cache-dir", str(tiny_cache), "--iters", "5", "--warmup", "1"]
    assert main([*argv, "--head", "flow", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["head"] == "flow" and row["act_ms"]["n"] == 5 and _ordered(row["act_ms"])


# -- bad input: one line, before anything is loaded or run ---------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["sundial"],
        ["loop", "--hz", "0"],
        ["loop", "--seconds", "-1"],
        ["loop", "--scenario", "nope"],
        ["loop", "--modes", "spin"],
        ["loop", "--modes", "nosuch=1,2"],
        ["loop", "--set", "hz=5"],
        ["loop", "--set", "spin=2"],
        ["loop", "--set", "nosuch=2"],
        ["loop", "--json", "/nonexistent-dir/x.json"],
        ["seed-table", "--clock", "sundial"],
        ["seed-table", "--cameras", "0"],
        ["vl", "--size", "abc"],
        ["vl", "--iters", "0"],
        ["vl", "--images", "0"],
        ["act", "--dof", "0"],
        ["act", "--warmup", "-1"],
        ["camera", "--fps", "0"],
        ["tick-cost", "--calls", "0"],
        ["tick-cost", "--gap-ms", "0"],
    ],
)
def test_bad_flags_are_one_line_before_any_model_loads(argv, capsys, monkeypatch) -> None:
    from policies import base as policies
    from policies.qwen_vla.policy import QwenVLAPolicy

    def no_model(*_a, **_k):
        raise AssertionError("a model was built before the flags were checked")

    monkeypatch.setattr(QwenVLAPolicy, "from_options", classmethod(no_model))
    monkeypatch.setattr(policies, "create", no_model)
    code, _, err = run_program(main, capsys, *argv)
    assert code == 2
    err = err.strip()
    assert err.count("\n") == 0 and "error" in err, err


# -- as a program ----------------------------------------------------------------------------


@pytest.mark.peer  # the benchmark run as a program of its own
def test_the_json_holds_the_exact_command_line(tmp_path) -> None:
    out = tmp_path / "seed.json"
    cmd = [
        sys.executable, "-m", "controller.bench", "seed-table", "--clock", "virtual",
        "--virtual-seconds", "5", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "seed-table [" in done.stderr
    doc = json.loads(out.read_text())
    assert doc["command"].split() == cmd


def test_tick_cost_times_each_piece_warm_and_after_a_sleep(tmp_path, capsys) -> None:
    out = tmp_path / "tick.json"
    assert main(["tick-cost", "--calls", "10", "--gap-ms", "1", "--json", str(out)]) == 0
    assert "| piece | before each call |" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    _check_document(doc, "tick-cost", "python -m controller.bench tick-cost")
    pieces = [
        "empty call",
        "numpy call",
        "input checks",
        "action filter",
        "both, in a tick's order",
    ]
    assert [r["piece"] for r in doc["rows"]] == [p for p in pieces for _ in (0, 1)]
    assert [r["gap_s"] for r in doc["rows"]] == [0.0, 0.001] * len(pieces)
    for r in doc["rows"]:
        assert r["cost_us"]["n"] == 10 and _ordered(r["cost_us"]) and r["cost_us"]["p50"] > 0
        assert ("cold_over_warm" in r) == (r["gap_s"] > 0)
