"""The process VL lane: parity with the thread lane, supervision (crash, hang), errors, cleanup.

Workers are real processes (spawned: a fake-policy worker starts in a few
tenths of a second, a tiny-Qwen one in seconds, shared by the tests that
need it). The controller-level test runs on the virtual clock: the worker's
encodes are executor jobs, so they cost zero virtual time, like a thread's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from controller.errors import ConfigError, describe
from controller.executor import ComputeExecutor, Lane
from controller.runtime import Controller, ControllerConfig
from controller.safety import SafetyConfig
from controller.shm_frames import leftover_segments
from controller.vl_process import (
    HANG_FACTOR,
    MIN_HANG,
    PolicySpec,
    ProcessVLPolicy,
    VLWorkerError,
    VLWorkerHung,
)
from drivers.base import Frame, JointLimits, RobotInfo, RobotState
from drivers.fake import FakeCamera, FakeRobot
from drivers.fake.config import FakeCameraConfig, FakeRobotConfig
from policies.errors import PolicyConfigError, PolicyError
from policies.fake import FakePolicy

ROBOT = RobotInfo(
    "test-arm",
    tuple(f"j{i}" for i in range(6)),
    JointLimits(np.full(6, -3.0), np.full(6, 3.0), np.full(6, 1.0)),
)
#: A fake policy with no latency of its own: the worker answers as fast as it can.
QUICK = {"vl_latency": 0, "action_latency": 0}


def images(seed: int, sizes: list[tuple[int, int]]) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(f"cam{i}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 5.0 + i, seed + i)
        for i, (h, w) in enumerate(sizes)
    ]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- bad specs: one clear line, before any process starts ----------------------------------


def test_an_unknown_policy_is_refused_naming_the_installed_ones():
    with pytest.raises(PolicyConfigError) as info:
        ProcessVLPolicy(PolicySpec("no-such-policy"))
    line = describe(info.value)
    assert "no policy named 'no-such-policy'" in line and "fake" in line
    assert "\n" not in line


def test_options_that_cannot_reach_the_worker_are_refused():
    with pytest.raises(PolicyConfigError, match="cannot be sent to the worker process"):
        ProcessVLPolicy(PolicySpec("fake", {"vl_latency": lambda: 0}), inner=FakePolicy())


def test_the_process_lane_needs_the_policy_spec():
    with pytest.raises(ConfigError, match="policy_spec"):
        Controller(
            ControllerConfig(vl_worker="process"),
            robot=FakeRobot(FakeRobotConfig()),
            cameras=[FakeCamera(FakeCameraConfig())],
            policy=FakePolicy(),
            executor=ComputeExecutor("cpu"),
        )


def test_the_hang_bound_follows_the_slowest_encode():
    lane = ProcessVLPolicy(PolicySpec("fake", QUICK), first_timeout=30.0)

    class Worker:
        slowest = 0.0

    w = Worker()
    # No steady encode yet (the first initialises lazily and is not measured).
    assert lane._bound(w) == 30.0
    w.slowest = 0.01
    assert lane._bound(w) == MIN_HANG
    w.slowest = 0.5
    assert lane._bound(w) == HANG_FACTOR * 0.5
    lane.timeout = 0.7
    assert lane._bound(w) == 0.7


# -- real workers ------------------------------------------------------------------------


@pytest.mark.peer
def test_a_load_failure_in_the_worker_is_one_clear_line_and_leaves_nothing():
    # The spec disagrees with the policy built here: the worker's own build refuses it.
    lane = ProcessVLPolicy(PolicySpec("fake", {**QUICK, "horizon": 0}), inner=FakePolicy())
    try:
        with pytest.raises(PolicyConfigError) as info:
            lane.load("cpu", ROBOT, 0.1)
        assert "horizon" in describe(info.value) and "\n" not in describe(info.value)
        assert lane.pid is None
    finally:
        lane.close()
    assert leftover_segments() == []


@pytest.mark.peer
def test_the_worker_runs_at_a_lower_cpu_priority_than_the_controller():
    lane = ProcessVLPolicy(PolicySpec("fake", QUICK), nice=7)
    try:
        lane.load("cpu", ROBOT, 0.1)
        here = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, lane.pid) == min(19, here + 7)
    finally:
        lane.close()


@pytest.mark.parametrize("nice", [-1, 20, 2.5, True])
def test_a_nice_outside_0_to_19_is_refused(nice):
    with pytest.raises(PolicyConfigError, match=r"nice must be an integer in 0\.\.19"):
        ProcessVLPolicy(PolicySpec("fake", QUICK), nice=nice)
    with pytest.raises(ConfigError, match="vl_worker_nice"):
        ControllerConfig(vl_worker_nice=nice)


@pytest.mark.peer
def test_a_hung_worker_is_killed_and_replaced():
    lane = ProcessVLPolicy(
        PolicySpec("fake", {"vl_latency": 600, "action_latency": 0}), timeout=0.5
    )
    try:
        lane.load("cpu", ROBOT, 0.1)
        first = lane.pid
        with pytest.raises(VLWorkerHung, match=r"no features within 0\.5 s"):
            lane.encode_vl(images(1, [(24, 32)]), "go")
        assert (lane.hangs, lane.crashes, lane.restarts) == (1, 0, 1)
        assert gone(first) and lane.pid not in (None, first)
    finally:
        lane.close()
    assert lane.pid is None and leftover_segments() == []


@pytest.mark.peer
def test_close_during_an_encode_ends_it_at_once_without_a_restart():
    lane = ProcessVLPolicy(PolicySpec("fake", {"vl_latency": 600, "action_latency": 0}))
    lane.load("cpu", ROBOT, 0.1)
    pid = lane.pid
    outcome: list[BaseException] = []

    def encode() -> None:
        try:
            lane.encode_vl(images(1, [(24, 32)]), "go")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=encode)
    thread.start()
    deadline = time.monotonic() + 10
    while not lane._res.worker.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    lane.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome[0], VLWorkerError) and "closed" in str(outcome[0])
    assert lane.starts == 1 and lane.pid is None and gone(pid)
    assert leftover_segments() == []


@pytest.mark.peer
@pytest.mark.virtual_clock
@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_a_killed_worker_is_restarted_while_the_controller_holds(
    controller_harness, virtual_clock, mode
):
    """SIGKILL mid-run: counted, the worker replaced, the arm held meanwhile, control resumes."""
    h = controller_harness(
        policy=FakePolicy(**QUICK),
        executor=ComputeExecutor("cpu"),
        policy_spec=PolicySpec("fake", QUICK),
        vl_worker="process",
        vl_mode=mode,
        # Fresh features are at most one period + one frame old; a missed encode is stale.
        safety=SafetyConfig(max_feature_age=0.15),
    )
    lane = h.controller.vl_worker
    killed: list[tuple[float, int]] = []

    def kill_at_tick_20(event: str, now: float, detail: object) -> None:
        if event == "tick" and getattr(detail, "index", None) == 20 and not killed:
            killed.append((now, lane.pid))
            os.kill(lane.pid, signal.SIGKILL)

    h.controller.observers.append(kill_at_tick_20)
    s = await h.run(5.0)
    ((kill_time, pid),) = killed
    assert (lane.crashes, lane.hangs, lane.restarts) == (1, 0, 1)
    assert s["errors"]["vl_worker_crash"] == 1 and s["errors"]["vl_encode"] == 1
    held = s["holds"].get("features_stale", 0) + s["holds"].get("vl_error", 0)
    assert held >= 1 and s["hold_episodes"] == 1
    # Control resumed on the new worker's features: every tick after the hold acted.
    assert s["actions_sent"] == s["ticks"] - s["hold_ticks"] >= 45
    after = [a for a in h.telemetry.actions if a.time > kill_time + 0.5]
    assert after and all(a.feature_age <= 0.15 for a in after)
    # Every exit path closes the lane: no worker, no segment left.
    assert lane.closed and lane.pid is None and gone(pid)
    assert leftover_segments() == []


# -- parity with the thread lane: the tiny default Qwen2.5-VL, CPU float32 ----------------


@pytest.fixture(scope="module")
def qwen_lane(tiny_cache: Path):
    lane = ProcessVLPolicy(PolicySpec("qwen-vla", {"cache_dir": str(tiny_cache)}))
    try:
        lane.load("cpu", ROBOT, 0.1)
        yield lane
    finally:
        lane.close()
        assert leftover_segments() == []


@pytest.mark.peer
async def test_process_features_are_bitwise_the_thread_lanes(qwen_lane):
    import torch

    ex = ComputeExecutor("cpu")  # the thread lane, torch threads set as the worker's
    await ex.start()
    try:
        thread_policy = qwen_lane.spec.build()
        await ex.run(Lane.VL, thread_policy.load, ex.device, ROBOT, 0.1)
        sets = [
            images(1, [(120, 160), (96, 128)]),
            images(2, [(120, 160), (96, 128)]),
            images(3, [(240, 320), (96, 128), (64, 64)]),  # bigger: the ring grows
        ]
        for frames in sets:
            here = await ex.run(Lane.VL, thread_policy.encode_vl, frames, "pick the red cube")
            there = await ex.run(Lane.VL, qwen_lane.encode_vl, frames, "pick the red cube")
            assert there.dtype == here.dtype == torch.float32
            assert there.shape == here.shape == (1, 1, thread_policy.config.vl_hidden)
            assert np.array_equal(there.numpy().view(np.uint32), here.numpy().view(np.uint32))
        assert len(qwen_lane.segments) == 2
    finally:
        await ex.close()


@pytest.mark.peer
def test_only_the_worker_loads_the_vl_model_and_act_runs_here(qwen_lane):
    inner = qwen_lane.inner
    assert inner.encoder is None and inner.model is not None  # SplitLoad: the action half only
    assert inner.config.vl_fingerprint == qwen_lane._vl["fingerprint"]
    features = qwen_lane.encode_vl(images(5, [(120, 160)]), "go")
    state = RobotState(np.zeros(6), np.zeros(6), capture_time=1.0)
    chunk = qwen_lane.act(features, state, {})
    assert chunk.shape == (inner.config.horizon, ROBOT.dof) and np.isfinite(chunk).all()
    with pytest.raises(PolicyError, match="before load"):
        inner.encode_vl(images(5, [(120, 160)]), "go")  # never here


@pytest.mark.peer
def test_a_policy_error_comes_back_as_itself_and_the_worker_lives_on(qwen_lane):
    pid = qwen_lane.pid
    bad = [Frame("cam0", np.zeros((32, 32), dtype=np.uint8), 1.0, 1)]  # grey, not RGB
    with pytest.raises(PolicyError, match="RGB uint8") as info:
        qwen_lane.encode_vl(bad, "go")
    assert "raised in the VL worker process" in "".join(info.value.__notes__)
    assert qwen_lane.pid == pid and qwen_lane.crashes == 0
    assert qwen_lane.encode_vl(images(4, [(48, 64)]), "go").shape[-1] > 0


# -- the controller as a program: every way it ends takes its worker and segments along -----


def _start_controller() -> tuple[subprocess.Popen[str], int, str]:
    """`python -m controller` with a fake policy in a process lane, once ACTIVE: (proc, worker pid, log)."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "controller", "--policy", "fake", "--device", "cpu"),
            *("--vl-worker", "process", "--status-interval", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 90
    err, worker = "", None
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stderr.readline()
        err += line
        if m := re.search(r"VL worker (\d+) started", line):
            worker = int(m.group(1))
        if "phase warming_up -> active" in line:
            break
    assert worker is not None and proc.poll() is None, err
    return proc, worker, err


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


@pytest.mark.peer
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_worker_and_its_segments_end_with_the_controller(how):
    proc, worker, err = _start_controller()
    try:
        assert leftover_segments(proc.pid), "the lane holds a segment while it runs"
        proc.send_signal(how)
        _, rest = proc.communicate(timeout=30)
    finally:
        proc.kill()
    if how == signal.SIGTERM:
        assert proc.returncode == 0, err + rest
        # Asked to exit if idle, killed if mid-encode (the fake encodes for 0.3 s of 0.3 s).
        assert f"VL worker {worker} stopped (" in rest, rest
    # SIGKILL: the kernel ends the worker with it (PR_SET_PDEATHSIG) and Python's
    # resource tracker unlinks what the dead controller registered.
    assert _wait_gone(worker), f"worker {worker} outlived the controller"
    deadline = time.monotonic() + 10
    while leftover_segments(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover_segments(proc.pid) == []
