"""Chromium publishes its fake camera through the publish page to our WHIP server."""

from __future__ import annotations

import asyncio

import pytest

from drivers.registry import create
from tests.webrtc.chromium import chromium, log_tail, missing_reason
from tests.webrtc.helpers import eventually, slot_fed_by

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
]


async def test_chromium_publishes_to_whip_camera_frames_reach_the_slot() -> None:
    loop = asyncio.get_running_loop()
    cam = create("camera", "whip://127.0.0.1:0/front", {"token": "t0ken", "watchdog_s": 3.0})
    async with cam, slot_fed_by(cam) as slot:
        page = cam.url.replace("/whip/front", "/publish?name=front&token=t0ken&auto=1")
        async with chromium(page) as proc:
            try:
                await eventually(lambda: slot.version >= 10, 40, "frames from Chromium")
                await eventually(
                    lambda: slot.latest() is not None
                    and slot.latest().value.time_source == "rtcp",
                    10, "a frame stamped from an RTCP sender report")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; Chromium log tail:\n{log_tail(proc)}") from None
            stamped = slot.latest()
            assert stamped is not None
            frame = stamped.value
            assert frame.size == (640, 480)
            assert frame.image.shape == (480, 640, 3)
            age = loop.time() - frame.capture_time
            assert 0 <= age < 1.0, age  # same host: sender and our clocks agree
            assert proc.returncode is None
