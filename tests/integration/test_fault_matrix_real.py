"""The fault matrix through the real UR5 driver and its simulator (real time, loopback).

Three representative rows of `python -m controller.fault_matrix_real`, with
their rules asserted one by one: a person's dashboard stop (no motion after
it, no automatic restart, recovery only on request), a dropped link (the
driver's own stop, recovered), and a steady extra delay on the RTDE stream
(held as stale, no command from stale state by the simulator's clock).

The simulator's view is checked to be independent of the driver: with a
clock mapping planted in the driver that absorbs the delay (the defect of
issue 8), the invariant checker, which has only the driver's word for
capture times, sees nothing wrong; the simulator's records count the stale
commands. The simulator's recording hooks are tested on virtual time first
(in memory); the rows run on real time over loopback sockets, marked `peer`.
"""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from controller.fault_matrix_real import ROWS, Row, Timing, measure, to_markdown
from drivers.ur.robot import ClockMap, UR5Robot
from drivers.ur.sim import SimConfig, UrSimulator
from drivers.ur.sim.record import SimRecorder
from tests.ur.conftest import next_host
from tests.ur.util import make, ready_state

#: Shorter than the matrix's own phases, so three rows fit a CI budget on 2 cores.
FAST = Timing(warm=1.5, watch=2.0, fault=1.5, after=1.5)

ROW = {r.name: r for r in ROWS}


def _show(row: Row) -> str:
    d = {"faults": [row.__dict__ | {"ok": row.ok}], "exits": []}
    return to_markdown(d)


# ------------------------------------------------------------------ the simulator's records


@pytest.mark.virtual_clock
async def test_samples_carry_their_serial_and_keep_order_when_a_delay_ends() -> None:
    """Every sample is traceable to when the simulator produced it; removing a link delay
    never lets new packets overtake the delayed ones (TCP keeps order)."""
    host = next_host()
    async with UrSimulator(SimConfig(host=host)) as sim, make(host) as robot:
        recorder = sim.record()
        await ready_state(robot)
        serials: list[int] = []

        async def collect() -> None:
            async for state in robot.states():
                serial = SimRecorder.serial_of(state.tcp_force)
                if serial is not None:
                    serials.append(serial)

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.5)
        sim.delay_link(0.3)
        await asyncio.sleep(0.2)  # keeps well under the driver's stale_after (0.5 s)
        sim.delay_link(0.0)
        await asyncio.sleep(0.6)
        task.cancel()
        assert len(serials) > 100
        assert all(b > a for a, b in itertools.pairwise(serials)), "reordered"
        sample = recorder.sample(serials[-1])
        assert sample is not None and math.isfinite(sample.produced)
        assert sample.timestamp == pytest.approx(sim.arm.time, abs=0.2)
        # every servo target the robot took is logged with its registers
        assert recorder.inputs and "input_int_register_24" in recorder.inputs[-1].values


# ------------------------------------------------------------------ rows (real time, marked peer)


@pytest.mark.peer
async def test_a_persons_dashboard_stop_is_held_never_undone_and_resumed_on_request() -> None:
    row = await measure(ROW["dashboard_stop"], FAST)
    shown = _show(row)
    assert row.error is None, shown
    assert row.detected_as[0] == "robot_not_ready" and row.detection_ms is not None, shown
    assert row.detection_ms < 500, shown
    # no motion after a person's stop (deceleration only), no restart while they watch
    assert row.motion_rad is not None and row.motion_rad < 0.01, shown
    assert row.restarted_by_driver is False, shown
    assert row.commands_during_fault == 0, shown
    # resumed once the person asked: a target reached the arm soon after
    assert row.recovery_ms is not None and row.recovery_ms < 3000, shown
    assert row.traced_commands > 20 and row.stale_commands == 0, shown
    assert row.unexplained_targets == 0 and row.violations == [], shown
    assert row.ok, shown


@pytest.mark.peer
async def test_a_dropped_link_is_a_stop_of_our_own_and_recovers() -> None:
    row = await measure(ROW["link_drop"], FAST)
    shown = _show(row)
    assert row.error is None, shown
    assert {"state_stale", "robot_disconnected"} & set(row.detected_as), shown
    assert row.detection_ms is not None and row.detection_ms < 500, shown
    # the program's watchdog stopped the arm while we were away: the driver restarts it
    assert row.restarted_by_driver is True, shown
    assert row.recovery_ms is not None and row.recovery_ms < 5000, shown
    assert row.stale_commands == 0 and row.unexplained_targets == 0, shown
    assert row.violations == [] and row.ok, shown


@pytest.mark.peer
async def test_a_steady_delay_holds_as_stale_and_no_command_uses_old_state() -> None:
    row = await measure(ROW["delay_steady"], FAST)
    shown = _show(row)
    assert row.error is None, shown
    assert row.detected_as == ["state_stale"], shown
    assert row.detection_ms is not None and row.detection_ms < 500, shown
    assert row.commands_during_fault == 0, shown
    # by the simulator's clock, not the driver's: every command from state < 150 ms old
    assert row.traced_commands > 20 and row.stale_commands == 0, shown
    assert row.max_state_age_at_act_ms is not None and row.max_state_age_at_act_ms < 150, shown
    assert row.restarted_by_driver is False, shown
    assert row.recovery_ms is not None and row.recovery_ms < 2000, shown
    assert row.violations == [] and row.ok, shown


class AbsorbingClock(ClockMap):
    """The clock mapping before issue 8: it follows the newest offset, so delay is no age."""

    def to_controller(self, device_time: float, arrival: float) -> float:
        if not (math.isfinite(device_time) and math.isfinite(arrival)):
            return math.nan
        self.offset = arrival - device_time
        return arrival


def _plant_absorbing_clock(robot: UR5Robot) -> None:
    robot.clock = AbsorbingClock()


@pytest.mark.peer
async def test_the_simulators_view_catches_stale_commands_the_driver_hides() -> None:
    row = await measure(ROW["delay_steady"], FAST, prepare=_plant_absorbing_clock)
    shown = _show(row)
    # the driver reports every state as fresh, so the controller acts on 300 ms old state
    # and the invariant checker (the driver's capture times) cannot tell ...
    assert row.violations == [], shown
    # ... but the simulator's records can
    assert row.stale_commands > 5, shown
    assert row.max_state_age_at_act_ms is not None and row.max_state_age_at_act_ms > 250, shown
    assert not row.ok and any("stale state" in b for b in row.broken), shown


@pytest.mark.peer
async def test_a_stop_while_connecting_ends_at_once_and_leaves_no_driver_task() -> None:
    from controller.fault_matrix_real import exit_row

    row = await exit_row()
    assert row.robot_stop_calls >= 1, row
    assert row.driver_tasks_left == [], row  # the cancelled connect cleaned up after itself
    assert row.ok, row.broken
