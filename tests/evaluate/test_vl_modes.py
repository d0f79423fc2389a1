"""The synchronous VL baseline and VL latency padding, on the virtual clock.

Encodes charge virtual time (`SimulatedExecutor.charge`), so rates, overruns
and feature ages are exact; every run is also held to the invariants.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from controller.errors import ConfigError, PolicyError
from controller.executor import Lane
from controller.harness import SimulatedExecutor
from controller.runtime import ControllerConfig
from controller.safety import HoldReason, SafetyConfig
from controller.vl_latency import PaddedPolicy, RealTimePadding, VirtualPadding
from drivers.fake import FakeCamera
from drivers.fake.config import FakeCameraConfig
from policies.fake import FakePolicy, Latency

pytestmark = pytest.mark.virtual_clock


async def test_sync_at_300ms_acts_every_encode_and_counts_the_overruns(
    controller_harness, virtual_clock
):
    h = controller_harness(policy=FakePolicy(vl_latency=0.3, action_latency=0.0), vl_mode="sync")
    s = await h.run(60)
    # One action per 0.3 s encode: ~3.3 actions/s, never a burst to catch up.
    assert s["actions_sent"] == 200
    assert s["control_rate_hz"] == pytest.approx(10 / 3, abs=0.01)
    # Two deadlines skipped after each tick (the last tick's fall past the end of the run).
    assert s["ticks"] == 200 and s["missed_ticks"] == 2 * 199
    assert h.controller.scheduler.stats.overruns == 200
    assert s["holds"] == {}
    # Each action used features of its own encode: no reuse.
    assert s["reuse"]["max"] == 1 and s["reuse"]["feature_versions_used"] == 200
    # Warm-up encoded once, then one encode per tick.
    assert s["vl_encodes"] == 201
    # Feature age at use: the encode's 0.3 s plus the frame's age (30 fps camera).
    ages = [a.feature_age for a in h.telemetry.actions]
    assert min(ages) >= 0.3 - 1e-9 and max(ages) <= 0.3 + 1 / 30 + 1e-9
    assert s["feature_age_at_use_ms"]["count"] == 200


async def test_async_at_300ms_holds_10_hz_by_reusing_features(controller_harness, virtual_clock):
    h = controller_harness(policy=FakePolicy(vl_latency=0.3, action_latency=0.0), vl_mode="async")
    s = await h.run(60)
    assert s["actions_sent"] == 600 and s["control_rate_hz"] == pytest.approx(10.0, rel=0.01)
    assert s["missed_ticks"] == 0 and h.controller.scheduler.stats.overruns == 0
    assert s["reuse"]["max"] == 3
    assert s["holds"] == {}


async def test_sync_rate_follows_the_encode_time_on_the_tick_grid(
    controller_harness, virtual_clock
):
    # 0.25 s of encode + 0.02 s of action end inside the third period: one action per 0.3 s.
    h = controller_harness(
        policy=FakePolicy(vl_latency=0.25, action_latency=0.02), vl_mode="sync", action_timeout=0.1
    )
    s = await h.run(30)
    assert s["actions_sent"] == 100 and s["missed_ticks"] == 2 * 99


async def test_sync_mode_still_holds_on_stale_frames(controller_harness, virtual_clock):
    cam = FakeCamera(FakeCameraConfig())
    h = controller_harness(
        cameras=[cam],
        policy=FakePolicy(vl_latency=0.2, action_latency=0.0),
        vl_mode="sync",
        safety=SafetyConfig(max_feature_age=0.5),
    )
    h.start(20)
    await h.until_active()
    await asyncio.sleep(2.0)
    cam.stall(3.0)  # the newest frame ages; each tick encodes it again
    await asyncio.sleep(1.0)
    holds_during = dict(h.telemetry.holds)
    s = await h.task
    assert holds_during.get(HoldReason.FEATURES_STALE.value, 0) >= 1
    # After the stall, actions resume (20 s of control, 3 s stalled).
    assert s["actions_sent"] >= 0.7 * 20 / 0.2


async def test_sync_mode_holds_on_a_failed_encode_instead_of_reusing(
    controller_harness, virtual_clock
):
    policy = FakePolicy(vl_latency=0.2, action_latency=0.0)
    h = controller_harness(policy=policy, vl_mode="sync")
    h.start(10)
    await h.until_active()
    await asyncio.sleep(1.0)
    policy.fail_next_encodes = 2
    s = await h.task
    assert s["holds"] == {HoldReason.VL_ERROR.value: 2}
    assert s["errors"]["vl_encode"] == 2


async def test_sync_mode_fails_the_run_after_too_many_failed_encodes(
    controller_harness, virtual_clock
):
    policy = FakePolicy(vl_latency=0.1, action_latency=0.0)
    h = controller_harness(policy=policy, vl_mode="sync", max_consecutive_failures=3)
    h.start(30)
    await h.until_active()
    policy.fail_next_encodes = 100
    with pytest.raises(PolicyError, match="VL encoding failed 3 times in a row"):
        await h.task
    assert h.robot.stops >= 1


async def test_sync_mode_holds_while_an_encode_hangs_and_stops_bounded(
    controller_harness, virtual_clock
):
    """An encode far longer than max_feature_age: ticks hold (the arm is held), never stall."""
    policy = FakePolicy(vl_latency=0.1, action_latency=0.0)
    h = controller_harness(policy=policy, vl_mode="sync", safety=SafetyConfig(max_feature_age=0.5))
    h.start(20)
    await h.until_active()
    policy.vl_latency = Latency.parse(5.0)
    await asyncio.sleep(3.0)
    assert h.telemetry.holds[HoldReason.FEATURES_STALE.value] >= 4
    assert h.telemetry.errors["vl_encode_overdue"] >= 4
    started = virtual_clock.time()
    s = await h.stop()
    assert virtual_clock.time() - started <= 1.0  # the pending encode does not delay the stop
    assert h.robot.stops >= 1
    assert s["hold_episodes"] >= 1


async def test_a_first_encode_failure_in_sync_warmup_is_retried(controller_harness, virtual_clock):
    policy = FakePolicy(vl_latency=0.1, action_latency=0.0)
    policy.fail_next_encodes = 2
    h = controller_harness(policy=policy, vl_mode="sync")
    s = await h.run(5)
    assert s["errors"]["vl_encode"] == 2 and s["actions_sent"] == 50


async def test_padding_adds_exactly_the_latency_in_virtual_time(controller_harness, virtual_clock):
    # A 0.05 s model padded to 0.3 s: each encode takes 0.3 s in all, not 0.35.
    h = controller_harness(
        policy=FakePolicy(vl_latency=0.05, action_latency=0.0), vl_latency=0.3, vl_max_hz=0
    )
    s = await h.run(30)
    assert s["vl_encodes"] == 100  # free-running (vl_max_hz=0): one per 0.3 s
    lat = h.telemetry.vl_latency
    assert lat.min == pytest.approx(0.3, abs=1e-9) and lat.max == pytest.approx(0.3, abs=1e-9)
    # A model already slower than the padding is not slowed further.
    h2 = controller_harness(
        policy=FakePolicy(vl_latency=0.4, action_latency=0.0), vl_latency=0.3, vl_max_hz=0
    )
    await h2.run(10)
    assert h2.telemetry.vl_latency.min == pytest.approx(0.4, abs=1e-9)
    assert h2.telemetry.vl_latency.max == pytest.approx(0.4, abs=1e-9)


async def test_padding_sets_the_sync_rate(controller_harness, virtual_clock):
    h = controller_harness(
        policy=FakePolicy(vl_latency=0.0, action_latency=0.0), vl_mode="sync", vl_latency=0.6
    )
    s = await h.run(30)
    assert s["actions_sent"] == 50  # one per 0.6 s
    assert s["feature_age_at_use_ms"]["p50"] >= 600


async def test_zero_latency_leaves_the_policy_unwrapped(controller_harness, virtual_clock):
    policy = FakePolicy()
    h = controller_harness(policy=policy, check_invariants=False)
    assert h.controller.policy is policy
    h2 = controller_harness(policy=FakePolicy(), vl_latency=0.1, check_invariants=False)
    assert isinstance(h2.controller.policy, PaddedPolicy)
    assert isinstance(h2.controller.policy.padding, VirtualPadding)


def test_bad_settings_are_refused_with_one_line():
    with pytest.raises(ConfigError, match="vl_latency"):
        ControllerConfig(vl_latency=-0.1)
    with pytest.raises(ConfigError, match="vl_mode"):
        ControllerConfig(vl_mode="sometimes")  # type: ignore[arg-type]


def test_real_time_padding_sleeps_only_the_rest():
    now = [10.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    class Model:
        name = "m"

        def encode_vl(self, frames, instruction):
            now[0] += 0.1  # the model's own 100 ms
            return "feat"

    padded = PaddedPolicy(Model(), 0.3, RealTimePadding(clock=lambda: now[0], sleep=sleep))
    assert padded.encode_vl([], "x") == "feat"
    assert slept == [pytest.approx(0.2)]
    assert padded.name == "m"


def test_real_time_padding_happens_on_the_calling_thread():
    """On the real executor the VL lane's thread sleeps: measure it on a real thread."""
    from concurrent.futures import ThreadPoolExecutor

    class Model:
        def encode_vl(self, frames, instruction):
            return 1

    padded = PaddedPolicy(Model(), 0.05, RealTimePadding())
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        assert pool.submit(padded.encode_vl, [], "x").result() == 1
        assert time.monotonic() - t0 >= 0.05


def test_simulated_executor_reports_what_a_job_charged():
    ex = SimulatedExecutor()

    with pytest.raises(RuntimeError):
        ex.charged()

    async def main() -> float:
        def job() -> float:
            ex.charge(0.2)
            ex.charge(0.05)
            return ex.charged()

        return await ex.run(Lane.VL, job)

    from controller.clock import run_virtual

    assert math.isclose(run_virtual(main), 0.25)
