"""Local cameras read by PyAV in a reader thread that keeps only the newest frame.

Demuxing and decoding block, so they run on a thread of their own; the
thread publishes into the camera's mailbox through a `ThreadPublisher`
(`drivers.newest`): it never blocks and never queues, and wakes the loop
only if no wake-up is pending. Colour conversion is left to the reader
(lazy `Frame`).
V4L2 frames carry the kernel's capture timestamp (CLOCK_MONOTONIC on
current kernels); where it is not plausible, the read time is used instead.
lavfi sources produce frames as fast as asked, so the thread paces them to
their own timestamps, like a camera.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Self

from drivers.av_frames import Arrived, newest_frames
from drivers.base import ConfiguredDriver, Frame, TimeSource
from drivers.errors import DriverConfigError
from drivers.lifecycle import Lifecycle
from drivers.local.config import LocalCameraConfig
from drivers.newest import LatestValue, ThreadPublisher

log = logging.getLogger(__name__)

KERNEL_PLAUSIBLE_S = 5.0


class LocalCamera(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    #: How frames arrive (PyAV format); `kind` is the driver category, as in every driver.
    transport: ClassVar[str] = "local"
    Config: ClassVar[type] = LocalCameraConfig
    spec_field: ClassVar[str | None] = "source"
    av_format: ClassVar[str] = ""
    paced: ClassVar[bool] = False

    def __init__(self, config: LocalCameraConfig) -> None:
        self.config = config
        self.name = config.name or self.default_name()
        self.newest: LatestValue[Arrived] = LatestValue(self.name)
        self.frames_read = 0
        self._container: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._publisher: ThreadPublisher[tuple[Any, float], Arrived] | None = None

    def default_name(self) -> str:
        return os.path.basename(self.config.source) or self.transport

    def av_options(self) -> dict[str, str]:
        return {}

    async def __aenter__(self) -> Self:
        import av

        self._publisher = ThreadPublisher(self.newest, asyncio.get_running_loop(), self._stamp)
        try:
            self._container = await asyncio.to_thread(
                av.open, self.config.source, format=self.av_format, options=self.av_options()
            )
        except (av.FFmpegError, OSError) as exc:
            raise DriverConfigError(
                f"{self.transport} camera {self.config.source!r} cannot be opened: {exc}"
            ) from None
        if not self._container.streams.video:
            self._container.close()
            raise DriverConfigError(f"{self.transport} camera {self.config.source!r} has no video")
        self._thread = threading.Thread(target=self._read, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        return self

    async def _release(self) -> None:
        """Stop the reader thread (bounded: a wedged device read is left behind), end `frames()`."""
        self._stop.set()
        thread = self._thread
        try:
            if thread is not None:
                await asyncio.to_thread(thread.join, 5.0)
            if self._container is not None and (thread is None or not thread.is_alive()):
                self._container.close()
        finally:
            self.newest.close()

    def frames(self) -> AsyncIterator[Frame]:
        return newest_frames(self.newest, self.name)

    # ------------------------------------------------------------ reader thread

    def _read(self) -> None:
        import av

        stream = self._container.streams.video[0]
        start_wall: float | None = None
        start_pts: float | None = None
        try:
            for vf in self._container.decode(stream):
                if self._stop.is_set():
                    return
                t = vf.time
                if self.paced and t is not None:
                    if start_wall is None:
                        start_wall, start_pts = time.monotonic(), t
                    delay = start_wall + (t - start_pts) - time.monotonic()  # type: ignore[operator]
                    if delay > 0 and self._stop.wait(delay):
                        return
                self.frames_read += 1
                if not self._publisher.publish((vf, time.monotonic())):  # type: ignore[union-attr]
                    return  # loop closed
        except av.FFmpegError as exc:
            log.error("camera %s: reading stopped: %s", self.name, exc)

    def _stamp(self, read: tuple[Any, float]) -> tuple[Arrived, float]:
        """On the loop: map the thread's read time to the loop clock and stamp the frame."""
        vf, read_mono = read
        loop_now = asyncio.get_running_loop().time()
        to_loop = loop_now - time.monotonic()  # 0 for asyncio's own loop
        arrival = read_mono + to_loop
        capture, source = self.capture_time(vf, read_mono, arrival, to_loop)
        return Arrived(vf, arrival, capture, source), capture

    def capture_time(
        self, vf: Any, read_mono: float, arrival: float, to_loop: float
    ) -> tuple[float, TimeSource]:
        return arrival, "arrival"


class V4L2Camera(LocalCamera):
    """A V4L2 device (`v4l2:///dev/video0`), stamped with kernel timestamps."""

    transport: ClassVar[str] = "v4l2"
    av_format: ClassVar[str] = "v4l2"

    def av_options(self) -> dict[str, str]:
        c = self.config
        opts = {"timestamps": "default"}  # the kernel's buffer timestamps, unchanged
        if c.size:
            opts["video_size"] = c.size
        if c.fps:
            opts["framerate"] = f"{c.fps:g}"
        if c.input_format:
            opts["input_format"] = c.input_format
        return opts

    def capture_time(
        self, vf: Any, read_mono: float, arrival: float, to_loop: float
    ) -> tuple[float, TimeSource]:
        t = vf.time
        if t is not None and 0 <= read_mono - t < KERNEL_PLAUSIBLE_S:
            return t + to_loop, "kernel"
        return arrival, "arrival"


class LavfiCamera(LocalCamera):
    """An FFmpeg lavfi test source (`lavfi://testsrc=size=640x480:rate=30`), paced."""

    transport: ClassVar[str] = "lavfi"
    av_format: ClassVar[str] = "lavfi"
    paced: ClassVar[bool] = True

    def default_name(self) -> str:
        return "lavfi"
