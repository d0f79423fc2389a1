"""The UR5 driver end to end against the simulator, reached in memory on virtual time."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from drivers.base import JointCommand, RobotDriver, now
from drivers.errors import ConnectionLost, DriverConfigError, NotReady
from drivers.registry import create
from drivers.ur import program
from drivers.ur.robot import UR5Robot
from drivers.ur.rtde_client import RtdeClient
from drivers.ur.rtde_codec import RecipeRefused
from drivers.ur.sim import SimConfig, UrSimulator
from drivers.ur.sim.arm import RUNTIME_PLAYING, RUNTIME_STOPPED

pytestmark = pytest.mark.virtual_clock  # the simulator is reached in memory


def make(host: str, **kw: object) -> UR5Robot:
    opts = {"host": host, "connect_timeout": 2.0, **kw}
    return UR5Robot.from_spec("", opts)


async def until(cond, limit: float = 5.0) -> None:
    """Polls simulator state (plain attributes, no event to wait on)."""
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def ready_state(robot: UR5Robot, limit: float = 5.0):
    async with asyncio.timeout(limit):
        async for s in robot.states():
            if s.ready:
                return s
    raise AssertionError("states() ended")


def test_config_errors_are_clear() -> None:
    with pytest.raises(DriverConfigError, match="'host' is required"):
        UR5Robot.from_spec("", {})
    with pytest.raises(DriverConfigError, match="unknown option 'hots'"):
        UR5Robot.from_spec("", {"hots": "1.2.3.4"})
    with pytest.raises(DriverConfigError, match=r"gain 5000\.0 outside"):
        UR5Robot.from_spec("", {"host": "h", "gain": 5000})
    robot = UR5Robot.from_spec("10.0.0.7", {"frequency": "500"})
    assert robot.config.host == "10.0.0.7" and robot.params.step == pytest.approx(0.002)


def test_registered_as_robot_ur5() -> None:
    robot = create("robot", "ur5", {"host": "192.168.1.10"})
    assert isinstance(robot, UR5Robot) and isinstance(robot, RobotDriver)
    assert robot.info.dof == 6 and robot.info.limits.max_velocity[0] == pytest.approx(np.pi)


async def test_connect_fails_within_bound(host: str) -> None:
    t0 = now()
    with pytest.raises(ConnectionLost, match="no RTDE link"):
        async with make(host, connect_timeout=0.5):
            pass
    assert now() - t0 < 5.0


async def test_states_commands_and_stop(sim: UrSimulator, host: str) -> None:
    async with make(host) as robot:
        s = await ready_state(robot)
        assert sim.scripts_received == 1 and sim.arm.runtime_state == RUNTIME_PLAYING
        assert s.capture_time <= now() + 1e-3 and now() - s.capture_time < 0.5
        assert s.tcp_pose is not None and s.tcp_pose.shape == (6,)
        start = s.positions.copy()
        goal = start + np.array([0.3, -0.2, 0.1, 0.0, 0.0, 0.2])
        for k in range(1, 11):  # 1 s of 10 Hz targets along a line
            await robot.command(JointCommand(start + (goal - start) * k / 10, 0.1, seq=k))
            await asyncio.sleep(0.1)
        await until(lambda: np.allclose(sim.arm.q, goal, atol=1e-3), 3.0)
        assert robot.commands_sent == 10
        # a jump larger than max_jump is refused by the program, the arm does not move
        await robot.command(JointCommand(goal + 1.0, 0.1, seq=11))
        await asyncio.sleep(0.2)
        assert np.allclose(sim.arm.q, goal, atol=1e-3)
        assert (await ready_state(robot)).mode == "REJECTED_JUMP"
        t0 = now()
        await robot.stop()
        await robot.stop()  # idempotent
        assert now() - t0 < 2.0
        assert sim.arm.program is not None and sim.arm.program.mode == program.MODE_STOP
        # stop is not the end: the next command resumes from where the arm is
        await robot.command(JointCommand(goal - 0.1, 0.2, seq=12))
        await until(lambda: np.allclose(sim.arm.q, goal - 0.1, atol=1e-3), 3.0)
    # __aexit__ stops and disconnects; the program then sees no inputs and its watchdog ends it
    await until(lambda: sim.arm.runtime_state == RUNTIME_STOPPED, 3.0)


async def test_state_clock_tracks_the_controller_clock(sim: UrSimulator, host: str) -> None:
    async with make(host) as robot:
        gaps, offsets = [], []
        n = 0
        async for s in robot.states():
            gaps.append(now() - s.capture_time)
            offsets.append(robot.clock.offset)
            n += 1
            if n >= 100:
                break
    assert min(gaps) >= -1e-6  # never in the future
    assert np.percentile(gaps, 50) < 0.05
    # the offset estimate settles: late samples move it by far less than transport jitter
    assert abs(offsets[-1] - offsets[50]) < 0.02


async def test_protective_stop_hold_then_recovery(sim: UrSimulator, host: str) -> None:
    async with make(host, auto_recover=True) as robot:
        s = await ready_state(robot)
        target = s.positions + 0.05
        await robot.command(JointCommand(target, 0.1, seq=1))
        await until(lambda: np.allclose(sim.arm.q, target, atol=1e-3), 3.0)
        sim.protective_stop()
        async with asyncio.timeout(3):
            async for st in robot.states():
                if not st.ready:
                    break
        assert "PROTECTIVE_STOP" in st.mode
        await until(lambda: not np.any(sim.arm.qd), 2.0)  # the stop brakes the arm
        settled = sim.arm.q.copy()
        with pytest.raises(NotReady, match="PROTECTIVE_STOP"):
            await robot.command(JointCommand(target + 0.05, 0.1, seq=2))
        # the driver waits out UR's unlock delay, unlocks and restarts the program
        s = await ready_state(robot, limit=10.0)
        assert sim.scripts_received == 2
        # nothing stale is resumed: the program holds where the arm is
        await asyncio.sleep(0.3)
        assert np.allclose(sim.arm.q, settled, atol=1e-9)
        assert np.allclose(sim.arm.program.cmd_q, settled, atol=1e-9)
        await robot.command(JointCommand(settled + 0.05, 0.1, seq=3))
        await until(lambda: np.allclose(sim.arm.q, settled + 0.05, atol=1e-3), 3.0)


async def test_link_drop_reconnects_and_sends_nothing_meanwhile(
    sim: UrSimulator, host: str
) -> None:
    async with make(host, reconnect_min=0.05, reconnect_max=0.2) as robot:
        s = await ready_state(robot)
        sim.drop_links(refuse_for=0.8)
        await until(lambda: robot._client is None, 2.0)
        received = sim.inputs_received
        for k in range(5):
            with pytest.raises(ConnectionLost):
                await robot.command(JointCommand(s.positions, 0.1, seq=k))
            with pytest.raises(ConnectionLost):
                await robot.hold()
            await asyncio.sleep(0.1)
        await robot.stop()  # never raises on a dead link
        assert sim.inputs_received == received
        # states() does not end while the link is down; it resumes after the reconnect
        t_drop = now()
        await until(lambda: robot.connects == 2, 8.0)
        async with asyncio.timeout(5):
            async for s2 in robot.states():  # may first repeat the pre-drop sample
                if s2.ready and s2.capture_time > t_drop:
                    break
        await robot.command(JointCommand(s2.positions + 0.02, 0.1, seq=9))
        await until(lambda: np.allclose(sim.arm.q, s2.positions + 0.02, atol=1e-3), 3.0)


async def test_malformed_packet_reconnects(
    sim: UrSimulator, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with make(host, reconnect_min=0.05) as robot:
        await ready_state(robot)
        with caplog.at_level(logging.WARNING):
            sim.send_raw(b"\x00\x05U\x07\x07")  # data for an unknown recipe, too short
            await until(lambda: robot.connects == 2, 5.0)
        assert "U (data) with 2-byte payload" in caplog.text
        await ready_state(robot)


async def test_stalled_data_reconnects(sim: UrSimulator, host: str) -> None:
    async with make(host, reconnect_min=0.05, stale_after=0.3) as robot:
        await ready_state(robot)
        sim.stop_data(0.6)
        await until(lambda: robot.connects == 2, 5.0)
        await ready_state(robot)


async def test_split_and_coalesced_packets(sim: UrSimulator, host: str) -> None:
    sim.split_packets, sim.coalesce = True, 3
    sim.send_text("hello from the sim", 3)
    async with make(host, stale_after=1.0) as robot:
        n, last = 0, -1.0
        async with asyncio.timeout(5):
            async for s in robot.states():
                assert s.capture_time > last
                last, n = s.capture_time, n + 1
                if n >= 60:
                    break


@pytest.mark.parametrize("protocol,freq", [(1, 125.0), (2, 500.0)])
async def test_protocol_versions_and_rates(host: str, protocol: int, freq: float) -> None:
    cfg = SimConfig(host=host, max_protocol=protocol, frequency=freq, version=(3, 15, 7, 0))
    async with UrSimulator(cfg), make(host, frequency=freq) as robot:
        assert robot._client is not None and robot._client.protocol == protocol
        await ready_state(robot)


async def test_inputs_in_use_are_refused(sim: UrSimulator, host: str) -> None:
    names = program.ProgramParams().input_names
    a, b = RtdeClient(host), RtdeClient(host)
    try:
        await a.connect()
        await b.connect()
        await a.setup_inputs(names)
        with pytest.raises(RecipeRefused, match=r"input_int_register_24 \(IN_USE\)"):
            await b.setup_inputs(names)
        with pytest.raises(RecipeRefused, match="NOT_FOUND"):
            await b.setup_outputs(["timestamp", "no_such_thing"], 125)
        recipe = await b.setup_outputs(["timestamp"], 125)
        assert recipe.recipe_id == 1  # ids handed out from 1; a refused recipe takes none
        await b.start()
        await b.receive()
        await b.pause()
        await b.start()  # P then S again
        assert "timestamp" in await b.receive()
    finally:
        await a.close()
        await b.close()


async def test_watchdog_stops_the_arm_when_inputs_stop(sim: UrSimulator, host: str) -> None:
    params = program.ProgramParams(watchdog_hz=5.0)
    client = RtdeClient(host)
    try:
        await client.connect()
        await client.setup_outputs(["timestamp", "actual_q"], 125)
        await client.setup_inputs(params.input_names)
        await client.start()
        q0 = list((await client.receive())["actual_q"])
        await client.send(params.inputs(0, program.MODE_HOLD, q0, 0.0))
        await program.upload(host, program.render(params))
        await until(lambda: sim.arm.runtime_state == RUNTIME_PLAYING, 2.0)
        far = [q0[0] + 0.3, *q0[1:]]
        for beat in range(1, 9):  # keep the watchdog fed for a while, as the driver does
            # slow: a 3 s segment; a new heartbeat on every write
            await client.send(params.inputs(1, program.MODE_SERVO, far, 3.0, heartbeat=beat))
            await asyncio.sleep(0.04)
        assert sim.arm.qd[0] > 0  # moving; now the PC goes silent
        await until(lambda: sim.arm.runtime_state == RUNTIME_STOPPED, 2.0)
        await until(lambda: abs(sim.arm.qd[0]) < 1e-9, 2.0)
        await asyncio.sleep(0.2)
        assert sim.arm.q[0] < q0[0] + 0.25  # stopped well short of the target
    finally:
        await client.close()
