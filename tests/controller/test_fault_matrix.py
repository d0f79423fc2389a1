"""The fault matrix, the random-fault soak, and the invariant checker that judges them."""

from __future__ import annotations

import asyncio

import pytest

from controller import fault_matrix
from controller.clock import run_virtual
from controller.faults import FAULTS
from controller.runtime import Controller
from controller.safety import SafetyFilter
from controller.soak import soak
from drivers.fake import FakeRobot
from drivers.fake.config import FakeRobotConfig


def test_every_fault_is_detected_as_itself_and_recovers_without_breaking_an_invariant():
    result = run_virtual(fault_matrix.run_matrix)
    rows = {r["fault"]: r for r in result["faults"]}
    assert set(rows) == {f.name for f in FAULTS}
    for fault in FAULTS:
        row = rows[fault.name]
        assert row["violations"] == [], (fault.name, row["violations"])
        assert row["detection_ms"] is not None, f"{fault.name} was never held for"
        assert set(row["detected_as"]) & set(row["expected"]), (fault.name, row["detected_as"])
        # Detected within the age limit it trips (1 s for features) plus one VL encode.
        assert row["detection_ms"] <= 1400, (fault.name, row["detection_ms"])
        assert row["recovery_ms"] is not None and row["recovery_ms"] <= 2500, fault.name
    for case in result["exits"]:
        assert case["robot_stop_calls"] >= 1
        assert case["ended_after_ms"] <= case["bound_ms"] + 1


def test_the_matrix_cli_prints_the_table_and_refuses_an_unknown_fault(capsys):
    assert fault_matrix.main(["--fault", "operator_stop"]) == 0
    out = capsys.readouterr().out
    assert "| operator_stop: a person stops the arm | robot_not_ready |" in out
    with pytest.raises(SystemExit) as exc:
        fault_matrix.main(["--fault", "gremlins"])
    assert exc.value.code == 2
    assert "unknown fault(s) gremlins" in capsys.readouterr().err


def test_random_fault_soak_keeps_every_invariant():
    result = run_virtual(lambda: soak(5.0, seed=3, mean_gap_s=2.0))
    assert result["invariant_violations"] == 0, result["violations"]
    assert result["faults_injected"] >= 60
    assert len(result["faults_by_kind"]) >= 12  # most of the catalogue was drawn
    assert result["commands_age_checked"] == result["commands_sent"] > 500
    assert result["missed_ticks"] == 0


# -- the checker itself must be able to fail ------------------------------------------------


@pytest.mark.virtual_clock
async def test_checker_catches_a_controller_that_acts_on_stale_state(
    controller_harness, monkeypatch
):
    monkeypatch.setattr(SafetyFilter, "check_inputs", lambda self, *a, **k: None)
    robot = FakeRobot(FakeRobotConfig())
    h = controller_harness(robot=robot)
    h.start(5)
    await h.until_active()
    robot.set_latency(0.5)  # every state now arrives 500 ms old
    with pytest.raises(AssertionError, match=r"computed from state \d+\.\d ms old"):
        await h.task


@pytest.mark.virtual_clock
async def test_checker_catches_a_run_that_never_stops_the_robot(controller_harness, monkeypatch):
    async def no_stop(self: Controller) -> None:
        return None

    monkeypatch.setattr(Controller, "_stop_robot", no_stop)
    robot = FakeRobot(FakeRobotConfig())
    robot.__aexit__ = lambda *exc: asyncio.sleep(0)  # type: ignore[method-assign]
    h = controller_harness(robot=robot)
    with pytest.raises(AssertionError, match=r"without calling robot.stop\(\)"):
        await h.run(2)
