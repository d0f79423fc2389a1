"""The controller with real drivers over real sockets (real time, short runs, generous bounds).

UR5 over RTDE against the simulator, a WHIP camera fed by an aiortc
publisher, and the default Qwen2.5-VL policy through the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from controller.executor import ComputeExecutor
from controller.runtime import Controller, ControllerConfig, Phase
from drivers.fake import FakeCamera, FakeRobot
from policies.fake import FakePolicy


@pytest.mark.parametrize("mode", ["servoj", "speedj"])
async def test_controller_drives_the_simulated_ur5_over_rtde(mode):
    from drivers.ur.robot import UR5Robot
    from drivers.ur.sim import SimConfig, UrSimulator
    from tests.ur.conftest import loopback_host

    host = loopback_host()
    async with UrSimulator(SimConfig(host=host)) as sim:
        start_q = sim.arm.q.copy()
        robot = UR5Robot.from_spec("", {"host": host, "control_mode": mode})
        ctl = Controller(
            ControllerConfig(status_interval=0),
            robot=robot,
            cameras=[FakeCamera()],
            policy=FakePolicy(vl_latency=0.05, action_latency=0.005, amplitude=0.2),
            executor=ComputeExecutor("cpu"),
        )
        s = await ctl.run(3.0)
        assert ctl.phase is Phase.STOPPED
        assert s["actions_sent"] >= 20, s
        assert s["state_age_at_use_ms"]["p99"] < 100
        assert np.max(np.abs(sim.arm.q - start_q)) > 0.01  # the simulated arm followed
        q_after_stop = sim.arm.q.copy()
        await asyncio.sleep(0.3)
        np.testing.assert_allclose(sim.arm.q, q_after_stop, atol=1e-3)  # and stopped


async def test_controller_sees_a_whip_camera_fed_over_webrtc():
    from drivers.webrtc import ice
    from drivers.webrtc.paint import PaintedTrack
    from drivers.webrtc.publish import WhipPublisher
    from drivers.webrtc.whip import WhipCamera

    with ice.host_addresses(["127.0.0.1"]):
        cam = WhipCamera.from_spec("127.0.0.1:0/front", {})
        robot = FakeRobot()
        ctl = Controller(
            ControllerConfig(status_interval=0, warmup_timeout=30),
            robot=robot,
            cameras=[cam],
            policy=FakePolicy(vl_latency=0.05, action_latency=0.005),
            executor=ComputeExecutor("cpu"),
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


def test_default_qwen_vla_policy_runs_from_the_command_line(tmp_path):
    stats = tmp_path / "s.json"
    env = dict(os.environ, VLA_CONTROLLER_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "--robot",
            "fake",
            "--duration",
            "3",
            "--device",
            "cpu",
            "--stats-json",
            str(stats),
            "--status-interval",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(stats.read_text())
    assert s["policy"] == "qwen-vla"
    assert s["actions_sent"] >= 20
    assert (
        s["vl_latency_ms"]["count"] >= 10 and s["action_latency_ms"]["count"] == s["actions_sent"]
    )
    assert s["feature_age_at_use_ms"]["count"] == s["actions_sent"]
    # The tiny default was built into the cache dir and loaded through from_pretrained.
    assert any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("robot", ["ur5"])
def test_unreachable_robot_fails_with_one_line(robot, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "--robot",
            robot,
            "--robot-host",
            "127.0.0.254",
            "--policy",
            "fake",
            "--device",
            "cpu",
            "--duration",
            "1",
            "--robot-option",
            "connect_timeout=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "run failed" in proc.stderr and "127.0.0.254" in proc.stderr
    assert "Traceback" not in proc.stderr
