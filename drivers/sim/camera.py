"""`camera.sim`: rendered views of the sim world (front, top, or the wrist), 224x224 by default.

Each frame is the world at one instant: a snapshot taken on the physics
thread at the frame's capture time, rendered on the world's render thread
(never on the event loop). The renderer is made when the camera connects,
so a machine without a working OpenGL fails there, with one line naming the
fix, instead of in the middle of a run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar, Self

from drivers.base import ConfiguredDriver, Frame
from drivers.lifecycle import Lifecycle, periodic
from drivers.sim.config import SimCameraConfig
from drivers.sim.world import SimWorld, shared_world


class SimCamera(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    Config = SimCameraConfig
    spec_field = "view"

    def __init__(self, config: SimCameraConfig | None = None) -> None:
        self.config = config or SimCameraConfig()
        self.name = self.config.name or self.config.view
        self._handle = shared_world(self.config.world, self.config.options, who="camera.sim")
        self.frames_sent = 0

    @property
    def world(self) -> SimWorld:
        return self._handle.world

    async def __aenter__(self) -> Self:
        cfg = self.config
        try:
            await self.world.prepare_view(cfg.view, cfg.width, cfg.height)
        except BaseException:
            await self.close()  # a failed connect releases what it took
            raise
        return self

    async def _release(self) -> None:
        await self._handle.release()

    async def frames(self) -> AsyncIterator[Frame]:
        cfg = self.config
        async for _ in periodic(1.0 / cfg.fps):
            snap = await self.world.snapshot()
            image = await self.world.render(cfg.view, cfg.width, cfg.height, snap)
            seq = self.frames_sent
            self.frames_sent += 1
            yield Frame(self.name, image, capture_time=snap.time, seq=seq, time_source="synthetic")
