"""The controller's sensing tasks: a driver stream pumped into its slot, restarted with backoff.

A stream that loses its link (`ConnectionLost`) or ends is restarted after
a short, growing delay and the controller holds meanwhile; anything else a
driver raises ends the run with the arm stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from controller.runtime import STREAM_BACKOFF
from drivers.base import Frame, now
from drivers.errors import ConnectionLost
from drivers.fake import FakeCamera, FakeRobot
from drivers.fake.config import FakeCameraConfig
from policies.fake import FakePolicy

pytestmark = pytest.mark.virtual_clock


class FlakyCamera(FakeCamera):
    """The fake camera, whose stream does one planned thing after each second of frames."""

    def __init__(self, plan: Sequence[str]) -> None:
        super().__init__(FakeCameraConfig(name="flaky"))
        self.plan = list(plan)
        self.starts: list[float] = []
        self.breaks: list[float] = []

    async def frames(self) -> AsyncIterator[Frame]:
        self.starts.append(now())
        step = self.plan.pop(0) if self.plan else None
        n = 0
        async for frame in super().frames():
            yield frame
            n += 1
            if step is not None and n == 30:
                self.breaks.append(now())
                if step == "lost":
                    raise ConnectionLost("camera cable pulled")
                if step == "bug":
                    raise RuntimeError("a driver bug")
                return  # "end": the stream just ends


async def test_a_lost_or_ended_stream_is_restarted_and_the_run_goes_on(
    controller_harness, virtual_clock
) -> None:
    cam = FlakyCamera(["lost", "lost", "end", "lost"])
    h = controller_harness(cameras=[cam], policy=FakePolicy(vl_latency=0.1))
    s = await h.run(10)
    assert len(cam.starts) == 5  # four breaks, four restarts
    # each broken session had delivered frames: the delay starts again from
    # the initial one (jittered down, never up)
    delays = [start - broke for broke, start in zip(cam.breaks, cam.starts[1:], strict=True)]
    low = STREAM_BACKOFF.initial * (1 - STREAM_BACKOFF.jitter)
    assert all(low - 1e-9 <= d <= STREAM_BACKOFF.initial + 1e-9 for d in delays), delays
    assert s["errors"].get("camera flaky_connection_lost") == 3  # the end is not a loss
    assert s["actions_sent"] >= 80


async def test_any_other_driver_error_ends_the_run_with_the_arm_stopped(
    controller_harness, virtual_clock
) -> None:
    robot = FakeRobot()
    cam = FlakyCamera(["bug"])
    h = controller_harness(robot=robot, cameras=[cam], policy=FakePolicy(vl_latency=0.1))
    with pytest.raises(RuntimeError, match="a driver bug"):
        await h.run(10)
    assert len(cam.starts) == 1  # not retried
    assert robot.stops >= 1
