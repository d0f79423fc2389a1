"""Newest-frame reception from a WebRTC track: one pump per track.

aiortc hands decoded frames to `track.recv()` through an unbounded queue, so
a consumer slower than the camera falls further behind with every frame
(aiortc issues 642, 1192, 104, 706). The pump drains that queue as fast as
frames arrive into a `NewestFrame` mailbox, which keeps only the newest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from drivers.av_frames import Arrived, NewestFrame, Stamper

__all__ = ["Arrived", "NewestFrame", "Stamper", "TrackPump"]

log = logging.getLogger(__name__)


class TrackPump:
    """Receives one remote track continuously into a `NewestFrame`.

    `stamp` turns a frame and its arrival time into a capture time (see
    `rtcp_clock.RtcpClock`). The pump ends when the track ends (peer gone or
    session closed); `close()` cancels it and waits for its `finally`.
    """

    def __init__(self, track: Any, sink: NewestFrame, stamp: Stamper) -> None:
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
                self._run(), name=f"pump-{self.sink.camera}"
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
                self.sink.put(Arrived(vf, arrival, capture, source))
        finally:
            self.ended.set()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():  # we ourselves are being cancelled
                raise
        except Exception:  # pragma: no cover - logged, never raised into teardown
            log.exception("%s: frame pump failed", self.sink.camera)
