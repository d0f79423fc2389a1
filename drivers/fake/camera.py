"""A synthetic camera: a coloured disc circling over a gradient, with capture timestamps.

Frames are rendered lazily (only those the VL encoder reads are drawn, on its
thread). `stall(seconds)` freezes the stream, the way a USB camera or a
WebRTC link does, so tests can check that the controller holds;
`clock_fault()` corrupts the reported capture times. The camera remembers
when each frame was really captured (`true_capture_time(seq)`), the ground
truth a test checks the controller's feature ages against.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import ClassVar

import numpy as np

from drivers.base import ConfiguredDriver, Frame, now
from drivers.fake.clock_faults import ClockFault, reported_time
from drivers.fake.config import FakeCameraConfig
from drivers.lifecycle import Lifecycle, periodic


@functools.lru_cache(maxsize=8)
def _gradient(width: int, height: int) -> np.ndarray:
    """The background of every frame of one size (read-only: each frame copies it)."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = 64
    img.flags.writeable = False
    return img


def render(width: int, height: int, t: float, seq: int) -> np.ndarray:
    """Draw the scene at time `t`: the disc's position encodes time, the corner encodes seq.

    Only the disc's bounding box is computed per frame, over a cached
    gradient: the fake stands in for cameras whose frames cost the
    controller's process nothing to produce, and drawing a whole frame (1 ms
    of numpy at 224 px, on the thread that hands frames to the VL lane)
    competed with the control loop for the GIL in every benchmark with
    several fake cameras. The pixels are those of the whole-frame formula.
    """
    img = _gradient(width, height).copy()
    cx = width / 2 + 0.3 * width * math.cos(2 * math.pi * 0.25 * t)
    cy = height / 2 + 0.3 * height * math.sin(2 * math.pi * 0.25 * t)
    r = max(2.0, 0.1 * min(width, height))
    x0, x1 = max(0, math.floor(cx - r)), min(width, math.ceil(cx + r) + 1)
    y0, y1 = max(0, math.floor(cy - r)), min(height, math.ceil(cy + r) + 1)
    if x0 < x1 and y0 < y1:
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[y0:y1, x0:x1][disc] = (255, 32, 32)
    img[0:4, 0:4] = seq % 256
    return img


#: Frames remembered for `true_capture_time` (about 2 min at 30 fps).
_TRUTH_KEPT = 4096


class FakeCamera(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    Config = FakeCameraConfig
    spec_field = "name"

    def __init__(self, config: FakeCameraConfig | None = None) -> None:
        self.config = config or FakeCameraConfig()
        self.name = self.config.name
        self._stalled_until = -math.inf
        self.frames_sent = 0
        self._clock_fault: ClockFault | None = None
        self._frozen_at = math.nan
        self._truth: OrderedDict[int, float] = OrderedDict()

    def stall(self, seconds: float) -> None:
        """No frames for `seconds` from now (controller clock)."""
        self._stalled_until = now() + seconds

    def clock_fault(self, kind: ClockFault | None) -> None:
        """Report NaN capture times, times frozen at now, or times 1 s in the future."""
        self._clock_fault = kind
        self._frozen_at = now()

    def true_capture_time(self, seq: int) -> float | None:
        """When frame `seq` was really captured (None: not a recent frame of this camera)."""
        return self._truth.get(seq)

    async def frames(self) -> AsyncIterator[Frame]:
        cfg = self.config
        async for _ in periodic(1.0 / cfg.fps):
            capture = now()
            if capture < self._stalled_until:
                continue
            seq = self.frames_sent
            self._truth[seq] = capture
            while len(self._truth) > _TRUTH_KEPT:
                self._truth.popitem(last=False)
            reported = reported_time(capture, self._clock_fault, self._frozen_at)
            if cfg.latency:
                await asyncio.sleep(cfg.latency)
            self.frames_sent += 1
            yield Frame(
                camera=self.name,
                image=lambda t=capture, s=seq: render(cfg.width, cfg.height, t, s),
                capture_time=reported,
                seq=seq,
                time_source="synthetic",
                size=(cfg.width, cfg.height),
            )
