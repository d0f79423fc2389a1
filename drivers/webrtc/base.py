"""What the WHIP and WHEP cameras share: the frame mailbox, owned tasks, staleness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from drivers.base import Frame
from drivers.webrtc.newest import NewestFrame, TrackPump
from drivers.webrtc.rtcp_clock import RtcpClock, SenderClock

log = logging.getLogger(__name__)


class WebRtcCameraBase:
    """Owns the newest-frame mailbox and every background task of one camera.

    Tasks started through `_spawn` are cancelled and awaited on `_close_tasks`,
    so nothing outlives the camera. The watchdog is the driver's own: aiortc
    notices a dead peer only after ~30 s (consent freshness) and never reports
    ICE failure without an end-of-candidates marker.
    """

    name: str
    watchdog_s: float

    def __init__(self, name: str) -> None:
        self.name = name
        self.newest = NewestFrame(name)
        self.stale = True
        self.stale_events = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pump: TrackPump | None = None
        self._closed = False

    async def __aexit__(self, *exc: object) -> None:
        """Close once: stop owned tasks, let the subclass release its link, end `frames()`."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._close_tasks()
            await self._release()
        finally:
            self.newest.close()

    async def _release(self) -> None:
        """Subclass hook: tear down the session and whatever the camera holds."""

    def frames(self) -> AsyncIterator[Frame]:
        """Newest frames as they arrive; silent while stale; ends when the camera closes."""
        return self.newest.frames()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "camera %s: task %s failed", self.name, task.get_name(), exc_info=task.exception()
            )

    async def _close_tasks(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_pump(self, track: Any, receiver: Any, sender_clock: SenderClock) -> TrackPump:
        old = self._pump
        if old is not None:
            self._spawn(old.close(), "pump-close")
        clock = RtcpClock(receiver, sender_clock=sender_clock)
        pump = TrackPump(track, self.newest, clock.stamp)
        pump.clock = clock  # type: ignore[attr-defined]
        pump.start()
        self._pump = pump
        return pump

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            await pump.close()

    def frame_age(self, now: float) -> float | None:
        last = self.newest.last_arrival
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
