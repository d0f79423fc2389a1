"""PyAV-decoded frames in a newest-value mailbox, shared by the WebRTC and local cameras.

Decoders (aiortc's, a PyAV capture thread) produce frames faster than a
controller reads them. A camera's mailbox is a `LatestValue[Arrived]` (the
one newest-value primitive, `drivers.newest`): it keeps exactly one frame,
the newest, so a reader never sees a backlog, whatever its rate; colour
conversion runs only for frames that are actually read (`Frame`'s lazy
converter), on the reader's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import Frame, TimeSource
from drivers.newest import LatestValue

log = logging.getLogger(__name__)

#: Maps (decoded frame, arrival time) to (capture time, time source).
Stamper = Callable[[Any, float], tuple[float, TimeSource]]


@dataclass(frozen=True, slots=True)
class Arrived:
    """A frame as the decoder delivered it: the decoded frame plus where it sits in time.

    The mailbox's `source_time` is `capture`; `arrival` is kept beside it
    because a camera's liveness watchdog judges arrivals, not capture times.
    """

    frame: Any  # av.VideoFrame (kept unconverted)
    arrival: float
    capture: float
    time_source: TimeSource


async def newest_frames(box: LatestValue[Arrived], camera: str) -> AsyncIterator[Frame]:
    """Yield each newest frame of `box` once, skipping any replaced before it was read.

    Yields nothing while the stream is stale; ends when the box is closed,
    raising the error it was closed with, if any. `Frame.seq` is the box's
    version, so a gap in `seq` is a frame dropped as stale.
    """
    async for stamped in box.stream():
        yield to_frame(camera, stamped.value, stamped.version)


def last_arrival(box: LatestValue[Arrived]) -> float | None:
    """When the newest frame arrived (None before the first); does not mark it read."""
    newest = box.peek()
    return None if newest is None else newest.value.arrival


def to_frame(camera: str, item: Arrived, seq: int) -> Frame:
    """Wrap a decoded frame; the RGB conversion runs only if someone reads `.image`.

    Two threads may read one frame (the VL lane and a recorder's writer):
    PyAV's conversion reuses the frame's own scaler, so it runs under a lock.
    """
    vf = item.frame
    lock = threading.Lock()

    def convert() -> Any:
        with lock:
            return vf.to_ndarray(format="rgb24")

    return Frame(
        camera,
        convert,
        capture_time=item.capture,
        seq=seq,
        time_source=item.time_source,
        size=(int(vf.width), int(vf.height)),
    )
