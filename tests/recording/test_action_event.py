"""The controller's "action" observer event, which recording is fed by."""

from __future__ import annotations

import asyncio

import pytest

from controller.recording import Recorder
from controller.runtime import ActionSent, Phase
from drivers.fake import FakeCamera
from drivers.fake.config import FakeCameraConfig
from tests.recording import v3_reader


@pytest.mark.virtual_clock
async def test_one_action_event_per_command_the_robot_accepted(controller_harness):
    h = controller_harness(
        cameras=[FakeCamera(FakeCameraConfig(name="a")), FakeCamera(FakeCameraConfig(name="b"))]
    )
    events: list[tuple[float, ActionSent]] = []
    ticks: list[float] = []

    def observe(event, time, detail):
        if event == "action":
            events.append((time, detail))
        elif event == "tick":
            ticks.append(time)

    h.controller.observers.append(observe)
    task = h.start(5.0)
    await h.until_active()
    await asyncio.sleep(2.0)
    h.robot.operator_stop()  # the robot refuses commands: holds, no action events
    await asyncio.sleep(1.0)
    summary = await task
    sent = [cmd for _, cmd in h.robot.commands]
    assert len(events) == len(sent) == summary["actions_sent"] < len(ticks)
    for (_, ev), cmd in zip(events, sent, strict=True):
        assert ev.command is cmd
        assert set(ev.frames) == {"a", "b"}
        # The observation it was decided on: state and frames no newer than the tick.
        assert ev.state.capture_time <= ticks[ev.tick]
        assert all(f.capture_time <= ticks[ev.tick] for f in ev.frames.values())
    assert [ev.tick for _, ev in events] == sorted({ev.tick for _, ev in events})


@pytest.mark.virtual_clock
async def test_episodes_in_virtual_time_lose_nothing_when_the_queue_holds_one(
    controller_harness, tmp_path
):
    """How `controller.collect` records: the loop outruns the writer in virtual time, so the
    queue holds a whole episode, episodes are started and ended explicitly, and the writer
    is drained after each."""
    rec = Recorder(tmp_path / "ds", fps=10, cameras=["fake"], capacity=200)
    for i, success in enumerate([True, False, True]):
        h = controller_harness()

        def on_event(event, time, detail, h=h, i=i):
            if event == "phase" and detail is Phase.ACTIVE:
                rec.start_episode(f"touch cube {i}", h.controller.robot.info)
            rec.observe(event, time, detail)

        h.controller.observers.append(on_event)
        summary = await h.run(20.0)
        rec.end_episode(success)
        await rec.drain()
        assert rec.dropped == 0 and summary["actions_sent"] == 200
    assert rec.close(30)
    ds = v3_reader.load(tmp_path / "ds")
    assert [(e["length"], e["success"]) for e in ds.episodes] == [
        (200, True),
        (200, False),
        (200, True),
    ]
