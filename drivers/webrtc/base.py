"""What the WHIP and WHEP cameras share: the frame mailbox, the driver lifecycle, staleness."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from drivers.av_frames import Arrived, last_arrival, newest_frames
from drivers.base import Frame
from drivers.lifecycle import Lifecycle
from drivers.newest import LatestValue
from drivers.webrtc.frame_assembly import complete_frames_at_marker
from drivers.webrtc.pump import TrackPump
from drivers.webrtc.rtcp_clock import RtcpClock, SenderClock

log = logging.getLogger(__name__)


class WebRtcCameraBase(Lifecycle):
    """Owns the newest-frame mailbox and, through `Lifecycle`, every background task of one camera.

    Tasks started through `spawn` are cancelled and awaited (bounded) on
    close, so nothing outlives the camera; the mailbox is closed last, which
    ends `frames()`. The watchdog is the driver's own: aiortc notices a dead
    peer only after ~30 s (consent freshness) and never reports ICE failure
    without an end-of-candidates marker.
    """

    watchdog_s: float

    def __init__(self, name: str) -> None:
        self.name = name
        self.newest: LatestValue[Arrived] = LatestValue(name)
        self.stale = True
        self.stale_events = 0
        self._pump: TrackPump | None = None

    async def close(self) -> None:
        """Close once: stop owned tasks, let the subclass release its link, end `frames()`."""
        try:
            await super().close()
        finally:
            self.newest.close()

    def frames(self) -> AsyncIterator[Frame]:
        """Newest frames as they arrive; silent while stale; ends when the camera closes."""
        return newest_frames(self.newest, self.name)

    def _start_pump(self, track: Any, receiver: Any, sender_clock: SenderClock) -> TrackPump:
        old = self._pump
        if old is not None:
            self.spawn(old.close(), "pump-close")
        pump = receive(track, receiver, self.newest, sender_clock)
        self._pump = pump
        return pump

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            await pump.close()

    def frame_age(self, now: float) -> float | None:
        last = last_arrival(self.newest)
        return None if last is None else now - last

    def _set_stale(self, stale: bool, why: str) -> None:
        if stale != self.stale:
            log.info(
                "camera %s: %s -> %s (%s)",
                self.name,
                "stale" if self.stale else "live",
                "stale" if stale else "live",
                why,
            )
            self.stale = stale
            if stale:
                self.stale_events += 1


def receive(
    track: Any, receiver: Any, box: LatestValue[Arrived], sender_clock: SenderClock
) -> TrackPump:
    """Start pumping a received video track into `box`: frames complete at their marker
    packet (`frame_assembly`), stamped with RTCP capture times (`rtcp_clock`)."""
    complete_frames_at_marker(receiver)
    clock = RtcpClock(receiver, sender_clock=sender_clock)
    pump = TrackPump(track, box, clock.stamp)
    pump.clock = clock  # type: ignore[attr-defined]
    pump.start()
    return pump
