"""A checkerboard camera that scrolls: the smallest useful camera driver.

Everything a driver needs: a config dataclass, `from_spec` (from the
`ConfiguredDriver` mixin), an async context manager (from the `Lifecycle`
base: `async with` ends in an idempotent, bounded `close()`), and an async
iterator of `Frame`s stamped with the controller clock (`drivers.base.now()`),
paced by `periodic()` on that clock, so the driver runs in virtual time
under the test harness. It imports only the drivers' interface modules
(`drivers.base`, `drivers.errors`, `drivers.lifecycle`), never the controller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from drivers.base import ConfiguredDriver, Frame, now
from drivers.errors import DriverConfigError
from drivers.lifecycle import Lifecycle, periodic


@dataclass(frozen=True)
class CheckerConfig:
    name: str = "checker"
    fps: float = 15.0
    size: int = 128
    square: int = 16

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise DriverConfigError(f"checker: fps must be positive, got {self.fps!r}")
        if self.size < self.square or self.square < 1:
            raise DriverConfigError(
                f"checker: need 1 <= square <= size, got {self.square}/{self.size}"
            )


class CheckerCamera(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    Config = CheckerConfig
    spec_field = "name"  # `--camera checker://left` names the camera "left"

    def __init__(self, config: CheckerConfig) -> None:
        self.config = config
        self.name = config.name

    # A camera that holds a device would open it in `__aenter__` and free it
    # in `_release()`; background tasks started with `self.spawn()` end on close.

    async def frames(self) -> AsyncIterator[Frame]:
        cfg = self.config
        async for k in periodic(1 / cfg.fps):  # tick k at t0 + k/fps, never drifting
            yy, xx = np.mgrid[0 : cfg.size, 0 : cfg.size]
            board = (((xx + k) // cfg.square + yy // cfg.square) % 2 * 255).astype(np.uint8)
            yield Frame(
                self.name, np.repeat(board[..., None], 3, axis=2), capture_time=now(), seq=k
            )
