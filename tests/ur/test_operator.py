"""Operator authority: the driver never undoes a stop it did not cause.

Each test plays the person at the robot against the simulator (dashboard
lines, the red button, the pendant's unlock) while the driver runs, on
virtual time, so "nothing happens for several seconds" costs no real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
import pytest

from drivers.base import JointCommand, now
from drivers.errors import NotReady
from drivers.ur import program
from drivers.ur.robot import UR5Robot
from drivers.ur.sim import UrSimulator
from drivers.ur.sim.arm import RUNTIME_PLAYING
from tests.ur.util import fresh_state, make, ready_state, state_where, until

pytestmark = pytest.mark.virtual_clock

Step = Callable[[UrSimulator], object]


def dash(line: str) -> Step:
    return lambda sim: sim.dashboard(line)


def unlock_on_pendant(sim: UrSimulator) -> None:
    assert sim.arm.unlock_protective_stop(min_delay=5.0)


# What a person does, step by step, one second apart.
OPERATOR_ACTIONS: dict[str, list[Step]] = {
    "dashboard stop": [dash("stop")],
    "dashboard pause": [dash("pause")],
    "pause, then play": [dash("pause"), dash("play")],
    "stop, then play of the loaded .urp": [
        dash("load /programs/pick.urp"),
        dash("stop"),
        dash("play"),
    ],
    "power off": [dash("power off")],
    "power off, power on, brake release": [
        dash("power off"),
        dash("power on"),
        dash("brake release"),
    ],
    "emergency stop, released, powered on, brakes released": [
        UrSimulator.emergency_stop,
        UrSimulator.release_emergency_stop,
        dash("power on"),
        dash("brake release"),
    ],
    "protective stop, unlocked on the pendant": [
        UrSimulator.protective_stop,
        lambda sim: None,
        lambda sim: None,
        lambda sim: None,
        lambda sim: None,
        lambda sim: None,
        unlock_on_pendant,
    ],
}


async def _moving(robot: UR5Robot, sim: UrSimulator) -> np.ndarray:
    """Start a slow 3 s move of 0.3 rad on joint 0; returns its target."""
    s = await ready_state(robot)
    target = s.positions + np.array([0.3, 0, 0, 0, 0, 0])
    await robot.command(JointCommand(target, 3.0, seq=1))
    await until(lambda: abs(sim.arm.qd[0]) > 0.01, 1.0)
    return target


async def _operator_does(sim: UrSimulator, steps: list[Step]) -> None:
    for step in steps:
        step(sim)
        await asyncio.sleep(1.0)


async def _controller_holds_for(robot: UR5Robot, seconds: float) -> list[str]:
    """Behave like the controller: a hold every tick, and a command that must be refused."""
    modes = []
    t_end = now() + seconds
    k = 100
    while now() < t_end:
        state = robot.latest_state
        assert state is not None and not state.ready, state
        modes.append(state.mode)
        with pytest.raises(NotReady):
            await robot.command(JointCommand(state.positions + 0.01, 0.1, seq=k))
        await robot.hold()
        k += 1
        await asyncio.sleep(0.1)
    return modes


@pytest.mark.parametrize("action", list(OPERATOR_ACTIONS))
async def test_operator_stop_is_never_undone(
    sim: UrSimulator, host: str, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with make(host) as robot:
        await _moving(robot, sim)
        assert sim.scripts_received == 1
        with caplog.at_level(logging.WARNING, logger="drivers.ur.robot"):
            await _operator_does(sim, OPERATOR_ACTIONS[action])
            q_stopped = sim.arm.q.copy()
            modes = await _controller_holds_for(robot, 6.0)
        # no restart, no motion, every command refused, for 6 s after the last step
        assert sim.scripts_received == 1 and robot.program_starts == 1
        np.testing.assert_allclose(sim.arm.q, q_stopped, atol=1e-9)
        assert not np.any(sim.arm.qd)
        assert all("resume needed" in m for m in modes), set(modes)
        assert robot.commands_sent == 1
        # said once, not once per packet
        latched = [r for r in caplog.records if "resume needed" in r.getMessage()]
        assert len(latched) == 1, [r.getMessage() for r in latched]


async def test_mode_text_says_who_stopped_and_what_to_do(sim: UrSimulator, host: str) -> None:
    async with make(host) as robot:
        await _moving(robot, sim)
        sim.dashboard("stop")
        s = await state_where(robot, lambda s: not s.ready, 1.0)
        assert s.mode == "PROGRAM STOPPED by operator: resume needed"
    async with make(host) as robot:
        await _moving(robot, sim)
        sim.dashboard("power off")
        s = await state_where(robot, lambda s: not s.ready, 1.0)
        assert s.mode == "ROBOT_MODE POWER_OFF (not caused by the driver): resume needed"
        sim.dashboard("power on")
        await asyncio.sleep(0.1)
        s = await fresh_state(robot)
        assert s.mode.endswith("resume needed (now ROBOT_MODE IDLE)")


async def test_resume_restarts_from_the_actual_position(sim: UrSimulator, host: str) -> None:
    async with make(host) as robot:
        target = await _moving(robot, sim)
        await asyncio.sleep(0.5)
        sim.dashboard("stop")  # mid-move: the old target is still in the registers
        await asyncio.sleep(1.0)
        q_stopped = sim.arm.q.copy()
        assert np.max(np.abs(target - q_stopped)) > 0.1
        await robot.resume()
        assert sim.scripts_received == 2 and sim.arm.runtime_state == RUNTIME_PLAYING
        s = await ready_state(robot, 1.0)
        await asyncio.sleep(2.0)
        # nothing stale resumed: the program holds where the arm stopped
        np.testing.assert_allclose(sim.arm.q, q_stopped, atol=1e-9)
        np.testing.assert_allclose(sim.arm.program.cmd_q, q_stopped, atol=1e-9)
        # and takes new targets again
        goal = s.positions + 0.05
        await robot.command(JointCommand(goal, 0.2, seq=2))
        await until(lambda: np.allclose(sim.arm.q, goal, atol=1e-4), 2.0)
        await robot.resume()  # running: nothing to do
        assert sim.scripts_received == 2


async def test_resume_refuses_an_arm_that_is_not_running(sim: UrSimulator, host: str) -> None:
    async with make(host) as robot:
        await _moving(robot, sim)
        sim.emergency_stop()
        await asyncio.sleep(0.5)
        with pytest.raises(NotReady, match="cannot resume: SAFETY ROBOT_EMERGENCY_STOP"):
            await robot.resume()
        sim.release_emergency_stop()
        await asyncio.sleep(0.5)
        with pytest.raises(NotReady, match=r"cannot resume: ROBOT_MODE POWER_OFF.*power on"):
            await robot.resume()
        sim.dashboard("power on")
        sim.dashboard("brake release")
        await asyncio.sleep(0.5)
        assert sim.scripts_received == 1
        await robot.resume()
        await ready_state(robot, 1.0)
        assert sim.scripts_received == 2


async def test_resume_right_after_the_unlock_judges_a_sample_newer_than_the_request(
    sim: UrSimulator, host: str
) -> None:
    """A person unlocks and asks at once: the newest sample may still show the stop."""
    async with make(host) as robot:
        await _moving(robot, sim)
        sim.protective_stop()
        await asyncio.sleep(6.0)
        unlock_on_pendant(sim)
        await robot.resume()  # no sleep: the driver waits for a sample taken after the unlock
        await ready_state(robot, 1.0)
        assert sim.scripts_received == 2


async def test_watchdog_stop_of_our_own_is_restarted(
    sim: UrSimulator, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The robot stops hearing us (a PC stall, a lossy link): our program stops the arm and
    says so in its status register; that stop is ours, so the driver restarts it."""
    async with make(host) as robot:
        target = await _moving(robot, sim)
        with caplog.at_level(logging.WARNING, logger="drivers.ur.robot"):
            sim.ignore_inputs(0.8)
            s = await state_where(robot, lambda s: not s.ready, 1.5)
            assert "WATCHDOG" in s.mode
            assert sim.arm.outputs["output_int_register_25"] == program.STATUS_WATCHDOG
            s = await ready_state(robot, 5.0)
        assert "watchdog stopped the arm" in caplog.text
        assert sim.scripts_received == 2 and robot.program_starts == 2
        q_restart = sim.arm.q.copy()
        await asyncio.sleep(2.0)
        # restarted from where the arm is: the interrupted move is not resumed
        np.testing.assert_allclose(sim.arm.q, q_restart, atol=1e-9)
        assert np.max(np.abs(target - q_restart)) > 0.1
        await robot.command(JointCommand(s.positions + 0.05, 0.2, seq=5))
        await until(lambda: np.allclose(sim.arm.q, s.positions + 0.05, atol=1e-4), 2.0)


async def test_watchdog_restart_survives_a_longer_silence(sim: UrSimulator, host: str) -> None:
    """Inputs lost for longer than one restart takes: the restarted program is stopped by
    its watchdog again; the driver tries again and gets it running once inputs flow."""
    async with make(host, connect_timeout=1.0) as robot:
        await _moving(robot, sim)
        sim.ignore_inputs(2.5)
        await state_where(robot, lambda s: not s.ready, 1.5)
        await ready_state(robot, 8.0)
        assert robot._latch is None and sim.scripts_received >= 3


async def test_protective_stop_with_auto_recover(sim: UrSimulator, host: str) -> None:
    """auto_recover covers a protective stop: unlocked after UR's 5 s, restarted in place."""
    async with make(host, auto_recover=True) as robot:
        await _moving(robot, sim)
        t_stop = now()
        sim.protective_stop()
        s = await state_where(robot, lambda s: not s.ready, 1.0)
        assert "PROTECTIVE_STOP" in s.mode and "auto_recover" in s.mode
        await until(lambda: not np.any(sim.arm.qd), 2.0)
        settled = sim.arm.q.copy()
        await ready_state(robot, 10.0)
        assert now() - t_stop >= 5.0  # never before UR's unlock delay
        assert sim.scripts_received == 2
        await asyncio.sleep(1.0)
        np.testing.assert_allclose(sim.arm.q, settled, atol=1e-9)


@pytest.mark.parametrize(
    "action",
    [
        "dashboard stop",
        "power off, power on, brake release",
        "emergency stop, released, powered on, brakes released",
    ],
)
async def test_auto_recover_never_covers_a_persons_stop(
    sim: UrSimulator, host: str, action: str
) -> None:
    async with make(host, auto_recover=True) as robot:
        await _moving(robot, sim)
        await _operator_does(sim, OPERATOR_ACTIONS[action])
        await _controller_holds_for(robot, 8.0)
        assert sim.scripts_received == 1


async def test_operator_stop_survives_a_reconnect(sim: UrSimulator, host: str) -> None:
    async with make(host, reconnect_min=0.05) as robot:
        await _moving(robot, sim)
        sim.dashboard("stop")
        await asyncio.sleep(0.5)
        sim.drop_links(refuse_for=0.3)
        await until(lambda: robot.connects == 2, 3.0)
        await _controller_holds_for(robot, 3.0)
        assert sim.scripts_received == 1


async def test_a_stop_while_the_link_was_down_is_not_ours(sim: UrSimulator, host: str) -> None:
    """The link drops, and a person stops the program before our watchdog could."""
    async with make(host, reconnect_min=0.05) as robot:
        await _moving(robot, sim)
        sim.drop_links(refuse_for=1.0)
        sim.dashboard("stop")
        await until(lambda: robot.connects == 2, 3.0)
        modes = await _controller_holds_for(robot, 3.0)
        assert "while the RTDE link was down" in modes[-1]
        assert sim.scripts_received == 1


async def test_a_lost_link_restarts_our_program(sim: UrSimulator, host: str) -> None:
    """A reconnect of our own: the watchdog stopped the program while we were away."""
    async with make(host, reconnect_min=0.05) as robot:
        await _moving(robot, sim)
        sim.drop_links(refuse_for=1.0)
        await until(lambda: robot.connects == 2, 3.0)
        await ready_state(robot, 3.0)
        assert sim.scripts_received == 2


async def test_robot_not_running_at_connect_waits_for_resume(host: str) -> None:
    from drivers.ur.sim import SimConfig

    async with UrSimulator(SimConfig(host=host, powered=False)) as sim:
        async with make(host) as robot:
            s = await fresh_state(robot)
            assert s.mode == "ROBOT_MODE POWER_OFF at connect: resume needed"
            sim.dashboard("power on")
            sim.dashboard("brake release")
            await _controller_holds_for(robot, 2.0)
            assert sim.scripts_received == 0
            await robot.resume()
            await ready_state(robot, 1.0)


async def test_power_on_option_starts_the_program_itself(host: str) -> None:
    from drivers.ur.sim import SimConfig

    async with (
        UrSimulator(SimConfig(host=host, powered=False)) as sim,
        make(host, power_on=True) as robot,
    ):
        await ready_state(robot, 3.0)
        assert sim.scripts_received == 1
