"""The controller with real drivers: UR5 over RTDE against the simulator, a WHIP camera fed
by an aiortc publisher, and the default Qwen2.5-VL policy through the command line.

The simulator is reached in memory and the WHIP peers share the test's loop, so
those run on the virtual clock; one copy of the UR5 run goes over loopback TCP
on real time (marked `peer`). The command-line runs are real time, short, with
generous bounds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from controller.executor import ComputeExecutor
from controller.harness import SimulatedExecutor
from controller.runtime import Controller, ControllerConfig, Phase
from drivers.fake import FakeCamera, FakeRobot
from policies.fake import FakePolicy


async def _drive_the_simulated_ur5(host: str, mode: str, *, virtual: bool) -> None:
    from drivers.ur.robot import UR5Robot
    from drivers.ur.sim import SimConfig, UrSimulator

    # On the virtual clock the fake model's latency is charged as virtual time.
    executor = SimulatedExecutor() if virtual else ComputeExecutor("cpu")
    burn = {"burn": executor.charge} if isinstance(executor, SimulatedExecutor) else {}
    async with UrSimulator(SimConfig(host=host)) as sim:
        start_q = sim.arm.q.copy()
        robot = UR5Robot.from_spec("", {"host": host, "control_mode": mode})
        ctl = Controller(
            ControllerConfig(status_interval=0),
            robot=robot,
            cameras=[FakeCamera()],
            policy=FakePolicy(vl_latency=0.05, action_latency=0.005, amplitude=0.2, **burn),
            executor=executor,
        )
        s = await ctl.run(3.0)
        assert ctl.phase is Phase.STOPPED
        assert s["actions_sent"] >= 20, s
        assert s["state_age_at_use_ms"]["p99"] < 100
        assert np.max(np.abs(sim.arm.q - start_q)) > 0.01  # the simulated arm followed
        # and stopped: a short deceleration (on virtual time it is seen from its first
        # instant), then no motion at all
        q_after_stop = sim.arm.q.copy()
        await asyncio.sleep(0.3)
        np.testing.assert_allclose(sim.arm.q, q_after_stop, atol=5e-3)
        q_settled = sim.arm.q.copy()
        await asyncio.sleep(0.3)
        np.testing.assert_allclose(sim.arm.q, q_settled, atol=1e-6)


@pytest.mark.virtual_clock
@pytest.mark.parametrize("mode", ["servoj", "speedj"])
async def test_controller_drives_the_simulated_ur5_over_rtde(mode: str) -> None:
    """The simulator reached in memory, on the virtual clock (`drivers.ur.transport`)."""
    from tests.ur.conftest import next_host

    await _drive_the_simulated_ur5(next_host(), mode, virtual=True)


@pytest.mark.peer
async def test_controller_drives_the_simulated_ur5_over_real_sockets() -> None:
    """The same over loopback TCP, on real time."""
    from tests.ur.conftest import loopback_host

    await _drive_the_simulated_ur5(loopback_host(), "servoj", virtual=False)


@pytest.mark.virtual_clock  # both peers on this loop: see tests/webrtc/virtual_media.py
async def test_controller_sees_a_whip_camera_fed_over_webrtc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.webrtc import virtual_media

    virtual_media.install(monkeypatch)
    from drivers.webrtc import ice
    from drivers.webrtc.paint import PaintedTrack
    from drivers.webrtc.publish import WhipPublisher
    from drivers.webrtc.whip import WhipCamera

    with ice.host_addresses(["127.0.0.1"]):
        cam = WhipCamera.from_spec("127.0.0.1:0/front", {})
        robot = FakeRobot()
        executor = SimulatedExecutor()  # the fake model's latency costs virtual time
        ctl = Controller(
            ControllerConfig(status_interval=0, warmup_timeout=30),
            robot=robot,
            cameras=[cam],
            policy=FakePolicy(vl_latency=0.05, action_latency=0.005, burn=executor.charge),
            executor=executor,
        )
        run = asyncio.create_task(ctl.run(3.0))
        async with asyncio.timeout(20):
            while cam.server is None:  # noqa: ASYNC110 - the server is set inside ctl.run()
                await asyncio.sleep(0.05)
        async with WhipPublisher(cam.url, PaintedTrack(30)):
            s = await asyncio.wait_for(run, 60)
    assert s["actions_sent"] >= 20, s
    assert s["vl_encodes"] >= 10
    # Features come from frames a few hundred ms old at most: no backlog.
    assert s["vl_frame_age_at_encode_ms"]["p50"] < 300
    assert len(robot.commands) == s["actions_sent"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`python -m controller ARGV` in this process: its exit code and its stderr."""
    from controller.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_default_qwen_vla_policy_runs_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = tmp_path / "s.json"
    monkeypatch.setenv("VLA_CONTROLLER_CACHE", str(tmp_path / "cache"))
    code, err = _cli(
        capsys,
        *("--robot", "fake", "--duration", "3", "--device", "cpu"),
        *("--stats-json", str(stats), "--status-interval", "0"),
    )
    assert code == 0, err[-3000:]
    s = json.loads(stats.read_text())
    assert s["policy"] == "qwen-vla"
    assert s["actions_sent"] >= 20
    assert (
        s["vl_latency_ms"]["count"] >= 10 and s["action_latency_ms"]["count"] == s["actions_sent"]
    )
    assert s["feature_age_at_use_ms"]["count"] == s["actions_sent"]
    # The tiny default was built into the cache dir and loaded through from_pretrained.
    assert any((tmp_path / "cache").iterdir())


def test_unreachable_robot_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(
        capsys,
        *("--robot", "ur5", "--robot-host", "127.0.0.254", "--policy", "fake"),
        *("--device", "cpu", "--duration", "1", "--robot-option", "connect_timeout=1"),
    )
    assert code == 1, err[-2000:]
    failed = [line for line in err.splitlines() if "run failed" in line]
    assert len(failed) == 1 and "127.0.0.254" in failed[0], err[-2000:]
    assert "Traceback" not in err
