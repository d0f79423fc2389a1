"""State age that cannot be fooled: the clock mapping, and invalid states.

ClockMap is tested as a plain function over sequences of (device time,
arrival time) pairs; then the same faults are injected into the simulator's
RTDE stream and seen through the driver's states.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from drivers.base import JointCommand, now
from drivers.errors import NotReady
from drivers.ur.robot import ClockMap, validate
from drivers.ur.sim import UrSimulator
from tests.ur.util import fresh_state, make, ready_state, state_where

RATE = 125.0


def ages(pairs: list[tuple[float, float]], clock: ClockMap | None = None) -> list[float]:
    """Age of each sample at its arrival: arrival minus its mapped capture time."""
    clock = clock or ClockMap()
    return [arrival - clock.to_controller(device, arrival) for device, arrival in pairs]


def stream(
    t0: float,
    t1: float,
    delay: float | None = None,
    *,
    base: float = 1000.0,
    transport: float = 0.001,
) -> list[tuple[float, float]]:
    """Samples at 125 Hz of device time t0..t1, arriving `transport` (+ `delay`) later."""
    n = round((t1 - t0) * RATE)
    return [(t0 + k / RATE, base + t0 + k / RATE + transport + (delay or 0.0)) for k in range(n)]


# ------------------------------------------------------------------ ClockMap alone


@pytest.mark.parametrize("delay", [0.3, 1.2])
def test_a_steady_extra_delay_shows_as_age_and_stays(delay: float) -> None:
    a = ages(stream(0, 5) + stream(5, 65, delay))
    assert max(a[: 5 * 125]) < 1e-9  # the baseline transport delay is not age
    late = a[5 * 125 :]
    # from the first delayed sample on, and still a minute later (the drift bound lets
    # the offset grow by 1e-4 s per s: 6 ms in 60 s)
    assert min(late) > delay - 0.01
    assert late[0] == pytest.approx(delay, abs=1e-5)


def test_a_growing_delay_shows_as_growing_age() -> None:
    pairs = [(k / RATE, 1000.0 + k / RATE + 0.001 + 0.05 * (k / RATE)) for k in range(10 * 125)]
    a = ages(pairs)
    assert a[-1] > 0.45  # 50 ms more per second, for 10 s


def test_a_frozen_device_clock_reads_as_ever_older() -> None:
    pairs = stream(0, 5) + [(5.0, 1000.0 + 5.0 + 0.001 + k / RATE) for k in range(10 * 125)]
    a = ages(pairs)
    frozen = a[5 * 125 :]
    assert all(b >= x for x, b in itertools.pairwise(frozen))  # never resets
    assert frozen[-1] == pytest.approx(10.0, abs=0.02)


def test_real_oscillator_drift_is_tracked() -> None:
    """A device clock 80 ppm slow over 20 minutes: the age stays near the transport delay."""
    pairs = [(k / 10, 1000.0 + (k / 10) * (1 + 80e-6) + 0.001) for k in range(20 * 60 * 10)]
    assert max(ages(pairs)) < 0.002


def test_a_smaller_delay_is_taken_at_once() -> None:
    clock = ClockMap()
    clock.to_controller(0.0, 1000.050)  # the first sample came late
    assert clock.offset == pytest.approx(1000.050)
    clock.to_controller(0.008, 1000.009)
    assert clock.offset == pytest.approx(1000.001)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_an_unusable_device_time_never_touches_the_mapping(bad: float) -> None:
    clock = ClockMap()
    a = ages(stream(0, 1), clock)
    offset = clock.offset
    assert math.isnan(clock.to_controller(bad, 1000.0 + 1.0))
    assert clock.offset == offset
    after = ages(stream(1.008, 3), clock)
    assert all(math.isfinite(x) for x in after) and max(after + a) < 1e-9


def test_a_restarted_robot_is_learnt_again() -> None:
    clock = ClockMap()
    ages(stream(100, 101), clock)
    # the device clock went backwards: a controller restart
    a = ages(stream(0.5, 2, base=1000.0 + 100.5), clock)
    assert max(a) < 1e-9 and clock.relearned == 2


def test_a_reconnect_keeps_the_mapping() -> None:
    clock = ClockMap()
    ages(stream(0, 2), clock)
    clock.new_session()  # the link came back with 0.8 s of delay
    a = ages(stream(3, 4, 0.8), clock)
    assert min(a) > 0.79 and clock.relearned == 1


def test_a_controller_rebooted_during_a_long_outage_is_learnt_again() -> None:
    clock = ClockMap()
    ages(stream(100, 101), clock)
    clock.new_session()  # 10 min later, a controller that booted 5 min ago (uptime 300 s)
    a = ages(stream(300, 301, base=1000.0 + 600 - 300 + 101), clock)
    assert max(a) < 1e-9 and clock.relearned == 2


@given(st.lists(st.tuples(st.floats(0.0, 0.02), st.floats(0.0, 0.5)), min_size=1, max_size=300))
@example(  # device + (arrival - device) rounded one ulp past arrival (found in CI)
    [(0.0, 0.44895577251428354), (0.01572790328409996, 0.0), (0.018165365353555223, 0.0)]
)
def test_mapped_time_is_never_in_the_future(samples: list[tuple[float, float]]) -> None:
    clock = ClockMap()
    device, arrival = 0.0, 1000.0
    for step, jitter in samples:
        device += step
        arrival = max(arrival, 1000.0 + device + jitter)
        assert clock.to_controller(device, arrival) <= arrival


# ------------------------------------------------------------------ validate()


@pytest.mark.parametrize(
    "field,value,why",
    [
        ("actual_q", [math.nan, 0, 0, 0, 0, 0], "actual_q not finite"),
        ("actual_qd", [0, 0, math.inf, 0, 0, 0], "actual_qd not finite"),
        ("actual_q", [0, 0, 0, 0, 0], r"actual_q has shape \(5,\)"),
        ("actual_q", [0, 7.0, 0, 0, 0, 0], "actual_q implausible: joint 1 at 7.000"),
        ("actual_qd", [0, 0, 0, 0, 0, 9.0], "actual_qd implausible: joint 5"),
        ("actual_TCP_pose", [0, 0, math.nan, 0, 0, 0], "actual_TCP_pose not finite"),
        ("actual_q", "garbage", "actual_q missing or not numbers"),
    ],
)
def test_implausible_states_are_named(field: str, value: object, why: str) -> None:
    values = {
        n: [0.0] * 6 for n in ("actual_q", "actual_qd", "actual_TCP_pose", "actual_TCP_force")
    }
    values[field] = value
    vectors, problem = validate(values)
    assert problem is not None
    assert re.search(why, problem), problem
    assert all(v.shape == (6,) for v in vectors.values())
    values[field] = [0.1] * 6
    assert validate(values)[1] is None


# ------------------------------------------------------------------ through the simulator


async def _age_now(robot) -> float:
    s = await fresh_state(robot)
    return now() - s.capture_time


@pytest.mark.virtual_clock
@pytest.mark.parametrize("delay", [0.3, 1.2])
async def test_sim_link_delay_shows_as_state_age(sim: UrSimulator, host: str, delay: float) -> None:
    async with make(host) as robot:
        await ready_state(robot)
        assert await _age_now(robot) < 0.01
        sim.delay_link(delay)
        # 1.2 s of silence exceeds stale_after: the driver reconnects, over the slow link
        await asyncio.sleep(delay + 1.0)
        await fresh_state(robot, 15.0)
        seen = []
        t_end = now() + 8.0  # seconds of it: the offset does not follow
        while now() < t_end:
            seen.append(await _age_now(robot))
            await asyncio.sleep(0.25)
        assert min(seen) > delay - 0.01, seen


@pytest.mark.virtual_clock
async def test_sim_frozen_timestamp_reads_as_ever_older(sim: UrSimulator, host: str) -> None:
    async with make(host) as robot:
        await ready_state(robot)
        sim.freeze_timestamp()
        seen = []
        for _ in range(12):
            await asyncio.sleep(0.5)
            seen.append(await _age_now(robot))
        assert all(b > x for x, b in itertools.pairwise(seen)), seen  # no reset
        assert seen[-1] > 5.5


@pytest.mark.virtual_clock
@pytest.mark.parametrize("bad", [math.nan, -1.0])
async def test_sim_bad_timestamp_is_one_invalid_state(
    sim: UrSimulator, host: str, bad: float
) -> None:
    async with make(host) as robot:
        await ready_state(robot)
        sim.corrupt_next(1, timestamp=bad)
        s = await state_where(robot, lambda s: not s.ready, 1.0)
        assert math.isnan(s.capture_time)
        assert s.mode.startswith("INVALID STATE: device timestamp")
        s = await fresh_state(robot)
        assert s.ready and math.isfinite(s.capture_time) and now() - s.capture_time < 0.01
        await asyncio.sleep(2.0)
        assert await _age_now(robot) < 0.01  # every later age is a number, and small
        assert robot.connects == 1


@pytest.mark.virtual_clock
@pytest.mark.parametrize(
    "values,why",
    [
        ({"actual_q": [math.nan] * 6}, "actual_q not finite"),
        ({"actual_qd": [0.0, math.inf, 0.0, 0.0, 0.0, 0.0]}, "actual_qd not finite"),
        ({"actual_q": [0.0, -1.57, 1.57, -1.57, 12.0, 0.0]}, "actual_q implausible: joint 4"),
    ],
)
async def test_sim_invalid_joint_values_hold_without_ending_the_session(
    sim: UrSimulator, host: str, values: dict, why: str
) -> None:
    async with make(host) as robot:
        s = await ready_state(robot)
        sim.corrupt_next(25, **values)
        bad = await state_where(robot, lambda s: not s.ready, 1.0)
        assert bad.mode == f"INVALID STATE: {why}" or bad.mode.startswith(f"INVALID STATE: {why}")
        with pytest.raises(NotReady, match="INVALID STATE"):
            await robot.command(JointCommand(s.positions, 0.1, seq=1))
        await robot.hold()  # holds at the last valid position, never at a NaN
        assert np.all(np.isfinite(sim.arm.inputs["input_double_register_24"]))
        good = await ready_state(robot, 1.0)
        np.testing.assert_allclose(good.positions, s.positions, atol=1e-9)
        assert robot.connects == 1 and robot.session_failures == 0
