"""Newest-frame reception from a WebRTC track: one pump per track.

aiortc hands decoded frames to `track.recv()` through an unbounded queue, so
a consumer slower than the camera falls further behind with every frame
(aiortc issues 642, 1192, 104, 706). The pump drains that queue as fast as
frames arrive into the camera's mailbox (a `LatestValue[Arrived]`), which
keeps only the newest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from drivers.av_frames import Arrived, Stamper
from drivers.lifecycle import cancel_bounded
from drivers.newest import LatestValue, SlotClosed

log = logging.getLogger(__name__)


class TrackPump:
    """Receives one remote track continuously into a mailbox.

    `stamp` turns a frame and its arrival time into a capture time (see
    `rtcp_clock.RtcpClock`). The pump ends when the track ends (peer gone or
    session closed) or its mailbox is closed; `close()` cancels it and waits
    for its `finally`, bounded. `sink` may be switched to another mailbox
    while it runs (a WHIP candidate's pump, once admitted, feeds the camera).
    """

    def __init__(self, track: Any, sink: LatestValue[Arrived], stamp: Stamper) -> None:
        self.track = track
        self.sink = sink
        self.stamp = stamp
        self.frames = 0
        self.first_frame = asyncio.Event()
        self.ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"pump-{self.sink.name}"
            )

    async def _run(self) -> None:
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    vf = await self.track.recv()
                except MediaStreamError:
                    return
                arrival = loop.time()
                capture, source = self.stamp(vf, arrival)
                self.frames += 1
                self.first_frame.set()
                try:
                    self.sink.publish(Arrived(vf, arrival, capture, source), capture, now=arrival)
                except SlotClosed:
                    return  # the camera closed: nobody reads this track any more
        finally:
            self.ended.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_bounded(task, f"camera {self.sink.name}: frame pump")
