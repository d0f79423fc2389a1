"""Local cameras through PyAV: lavfi test source, and a missing V4L2 device."""

from __future__ import annotations

import asyncio

import pytest

from drivers.errors import DriverConfigError
from drivers.registry import create
from tests.webrtc.helpers import eventually, slot_fed_by


async def test_lavfi_camera_is_paced_and_newest_only() -> None:
    loop = asyncio.get_running_loop()
    cam = create("camera", "lavfi://testsrc=size=320x240:rate=30", {"name": "test"})
    async with cam, slot_fed_by(cam) as slot:
        await slot.wait_newer(0)
        t0, v0 = loop.time(), slot.version
        for _ in range(4):  # a slow reader: 2 Hz
            await asyncio.sleep(0.5)
            frame = slot.latest().value
            assert loop.time() - frame.capture_time < 0.2
        rate = (slot.version - v0) / (loop.time() - t0)
        assert 15 < rate < 45, rate  # paced near 30 fps, not as fast as the CPU allows
        assert frame.camera == "test" and frame.time_source == "arrival"
        image = await asyncio.to_thread(lambda: frame.image)  # conversion off the loop
        assert image.shape == (240, 320, 3)
    await eventually(
        lambda: cam._thread is not None and not cam._thread.is_alive(),
        5,
        "the reader thread to end",
    )


async def test_missing_v4l2_device_is_a_configuration_error() -> None:
    cam = create("camera", "v4l2:///dev/video-does-not-exist", {})
    assert cam.name == "video-does-not-exist"
    with pytest.raises(DriverConfigError, match="cannot be opened"):
        async with cam:
            pass


def test_local_config() -> None:
    with pytest.raises(DriverConfigError, match="size"):
        create("camera", "v4l2:///dev/video0", {"size": "big"})
    assert create("camera", "v4l2:///dev/video0", {"size": "640x480", "fps": 30}).av_options() == {
        "timestamps": "default",
        "video_size": "640x480",
        "framerate": "30",
    }
