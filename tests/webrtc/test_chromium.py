"""Chromium publishes its fake camera through the publish page to our WHIP server."""

from __future__ import annotations

import asyncio

import pytest

from drivers.registry import create
from drivers.webrtc.frame_assembly import _BUFFER, MarkerJitterBuffer
from tests.webrtc.chromium import chromium, evaluate, log_tail, missing_reason
from tests.webrtc.helpers import eventually, slot_fed_by

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
]


async def test_chromium_publishes_to_whip_camera_frames_reach_the_slot() -> None:
    """The token is typed into the page's password field; one in the URL is ignored."""
    loop = asyncio.get_running_loop()
    cam = create("camera", "whip://127.0.0.1:0/front", {"token": "t0ken", "watchdog_s": 3.0})
    async with cam, slot_fed_by(cam) as slot:
        server = cam.server
        page = cam.url.replace("/whip/front", "/publish?name=front&token=t0ken&auto=1")
        async with chromium(page) as proc:
            try:
                # the page publishes at once (auto=1) but without the URL's token
                await eventually(lambda: server.refused[401] >= 1, 40, "a POST refused with 401")
                assert cam.newest.version == 0 and not server.sessions
                assert "token" not in await evaluate(proc, "location.href")
                await evaluate(
                    proc,
                    "document.getElementById('token').value = 't0ken';"
                    "document.getElementById('start').click(); true",
                )
                await eventually(lambda: slot.version >= 10, 40, "frames from Chromium")
                await eventually(
                    lambda: slot.latest() is not None and slot.latest().value.time_source == "rtcp",
                    10,
                    "a frame stamped from an RTCP sender report",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; Chromium log tail:\n{log_tail(proc)}") from None
            stamped = slot.latest()
            assert stamped is not None
            frame = stamped.value
            assert frame.size == (640, 480)
            assert frame.image.shape == (480, 640, 3)
            age = loop.time() - frame.capture_time
            assert 0 <= age < 1.0, age  # same host: sender and our clocks agree
            # Chromium marks each frame's last packet: frames leave the jitter buffer there.
            buffer = getattr(cam.session.receiver, _BUFFER)
            assert isinstance(buffer, MarkerJitterBuffer) and buffer.marked_frames >= 10
            assert proc.returncode is None
