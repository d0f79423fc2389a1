"""Shared test helpers: feeding a camera into the controller's slot, waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from controller.slot import LatestValue, pump
from drivers.base import Frame


@contextlib.asynccontextmanager
async def slot_fed_by(cam: object) -> AsyncIterator[LatestValue[Frame]]:
    """What the controller does (the same `pump`): `cam.frames()` into a latest-value slot."""
    slot: LatestValue[Frame] = LatestValue(getattr(cam, "name", "cam"))
    frames = cam.frames()  # type: ignore[attr-defined]
    task = asyncio.get_running_loop().create_task(pump(frames, slot, _capture_time))
    try:
        yield slot
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _capture_time(frame: Frame) -> float:
    return frame.capture_time


async def eventually(pred: Callable[[], bool], within: float, what: str) -> None:
    """Poll `pred` until true; fail naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)
