import asyncio

import pytest

from drivers.webrtc.frame_assembly import _BUFFER
from drivers.webrtc.paint import PaintedTrack
from drivers.webrtc.publish import WhipPublisher
from drivers.webrtc.whip import WhipCamera
from tests.webrtc.helpers import slot_fed_by


@pytest.mark.virtual_clock
async def test_dbg():
    loop = asyncio.get_running_loop()
    cam = WhipCamera.from_spec("127.0.0.1:0/front", {})
    async with cam, WhipPublisher(cam.url, PaintedTrack(30)), slot_fed_by(cam) as slot:
        await slot.wait_newer(0)
        for _ in range(12):
            await asyncio.sleep(0.5)
            stamped = slot.latest()
            frame = stamped.value
            now = loop.time()
            b = getattr(cam.session.receiver, _BUFFER)
            print(
                cam._pump.clock.mode if cam._pump else None,
                round(now, 2),
                cam.newest.version,
                slot.version,
                round(now - frame.capture_time, 3),
                frame.time_source,
                b.marked_frames,
                b._origin,
                b._frame_start,
            )
