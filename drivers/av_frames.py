"""A newest-frame mailbox for PyAV-decoded frames, shared by the WebRTC and local cameras.

Decoders (aiortc's, a PyAV capture thread) produce frames faster than a
controller reads them. The mailbox keeps exactly one, the newest; a reader
never sees a backlog, whatever its rate, and colour conversion runs only for
frames that are actually read (`Frame`'s lazy converter), on the reader's
thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import Frame, TimeSource

log = logging.getLogger(__name__)

#: Maps (decoded frame, arrival time) to (capture time, time source).
Stamper = Callable[[Any, float], tuple[float, TimeSource]]


@dataclass(frozen=True, slots=True)
class Arrived:
    """A frame as the pump saw it: the decoder's frame plus where it sits in time."""

    frame: Any  # av.VideoFrame (kept unconverted)
    arrival: float
    capture: float
    time_source: TimeSource


class NewestFrame:
    """A one-frame mailbox shared by every session of one camera.

    Sessions come and go (reconnects, a new publisher); the mailbox and the
    reader's `frames()` iterator stay, so the controller's stream never ends
    while the camera is open. Publishing replaces; nothing is queued.
    """

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self._newest: Arrived | None = None
        self._seq = 0
        self._changed = asyncio.Event()
        self._closed = False
        self.received = 0
        self.dropped_unread = 0
        self._read_seq = 0

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def newest(self) -> Arrived | None:
        return self._newest

    @property
    def last_arrival(self) -> float | None:
        return None if self._newest is None else self._newest.arrival

    def put(self, item: Arrived) -> None:
        if self._closed:
            return
        if self._newest is not None and self._read_seq < self._seq:
            self.dropped_unread += 1
        self._newest = item
        self._seq += 1
        self.received += 1
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def frames(self) -> AsyncIterator[Frame]:
        """Yield each newest frame once; skip any replaced before it was read.

        Yields nothing while the stream is stale; ends only on `close()`.
        """
        seen = 0
        while not self._closed:
            if self._seq > seen and self._newest is not None:
                seen = self._seq
                self._read_seq = seen
                yield to_frame(self.camera, self._newest, seen)
                continue
            await self._changed.wait()


def to_frame(camera: str, item: Arrived, seq: int) -> Frame:
    """Wrap a decoded frame; the RGB conversion runs only if someone reads `.image`."""
    vf = item.frame

    def convert() -> Any:
        return vf.to_ndarray(format="rgb24")

    return Frame(
        camera,
        convert,
        capture_time=item.capture,
        seq=seq,
        time_source=item.time_source,
        size=(int(vf.width), int(vf.height)),
    )
