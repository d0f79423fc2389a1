"""Timestamps painted into frames, to measure camera-to-slot latency end to end.

The sender paints its `time.monotonic()` (CLOCK_MONOTONIC: one clock for
every process on the host, and the asyncio loop's clock) as 40 black/white
blocks big enough to survive VP8 at low bitrate; the receiver reads them
back from the decoded frame. The sender also runs as a plain aiortc track,
so tests and the benchmark share one source.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import VideoStreamTrack

BITS = 40
BLOCK = 16
COLS = 20
TICKS_PER_S = 10_000  # 0.1 ms resolution, wraps after ~3.5 years
VIDEO_CLOCK = 90_000


def paint_yuv(t: float, width: int = 640, height: int = 480, seq: int = 0) -> np.ndarray:
    """A yuv420p image (as PyAV's `from_ndarray` wants it) carrying `t`."""
    y = np.full((height, width), 96, np.uint8)
    # a moving bar so the encoder sees motion, as with a real camera
    x = (seq * 8) % width
    y[height // 2 :, x : x + 24] = 200
    value = round(t * TICKS_PER_S) % (1 << BITS)
    for bit in range(BITS):
        r, c = divmod(bit, COLS)
        on = (value >> bit) & 1
        y[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = 235 if on else 16
    chroma = np.full((height // 2, width), 128, np.uint8)
    return np.concatenate([y, chroma])


def read_luma(y: np.ndarray) -> float | None:
    """The painted time (seconds, monotonic clock) from a luma plane, or None."""
    if y.shape[0] < 2 * BLOCK or y.shape[1] < COLS * BLOCK:
        return None
    value = 0
    for bit in range(BITS):
        r, c = divmod(bit, COLS)
        cell = y[r * BLOCK + 4 : (r + 1) * BLOCK - 4, c * BLOCK + 4 : (c + 1) * BLOCK - 4]
        m = float(cell.mean())
        if 60 < m < 190:
            return None  # not a painted frame
        if m >= 190:
            value |= 1 << bit
    return value / TICKS_PER_S


def read_frame(frame: object) -> float | None:
    """The painted time of a decoded `av.VideoFrame`."""
    y = frame.to_ndarray(format="gray")  # type: ignore[attr-defined]
    return read_luma(y)


def unwrap(painted: float, now: float) -> float:
    """Undo the painted value's wrap, choosing the reading nearest `now`."""
    period = (1 << BITS) / TICKS_PER_S
    return painted + round((now - painted) / period) * period


class PaintedTrack(VideoStreamTrack):
    """An aiortc video track painting the current monotonic time at `fps`.

    Frames are paced on absolute deadlines; after a long stall it resyncs
    instead of bursting, as a real camera would.
    """

    def __init__(self, fps: float = 30.0, width: int = 640, height: int = 480) -> None:
        super().__init__()
        self.fps, self.width, self.height = fps, width, height
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        delay = self._t0 + self.sent / self.fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            self._t0 = loop.time() - self.sent / self.fps
        img = paint_yuv(time.monotonic(), self.width, self.height, self.sent)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = int(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame
