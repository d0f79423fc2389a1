"""A checkerboard camera that scrolls: the smallest useful camera driver.

Everything a driver needs: a config dataclass, `from_spec` (from the
`ConfiguredDriver` mixin), an async context manager, and an async iterator of
`Frame`s stamped with the controller clock (`drivers.base.now()`).
It imports only `drivers.base` and `drivers.errors`, never the controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np

from drivers.base import ConfiguredDriver, Frame, now
from drivers.errors import DriverConfigError


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


class CheckerCamera(ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    Config = CheckerConfig
    spec_field = "name"  # `--camera checker://left` names the camera "left"

    def __init__(self, config: CheckerConfig) -> None:
        self.config = config
        self.name = config.name

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def frames(self) -> AsyncIterator[Frame]:
        cfg = self.config
        t0, k = now(), 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, t0 + k / cfg.fps - now()))
            yy, xx = np.mgrid[0 : cfg.size, 0 : cfg.size]
            board = (((xx + k) // cfg.square + yy // cfg.square) % 2 * 255).astype(np.uint8)
            yield Frame(
                self.name, np.repeat(board[..., None], 3, axis=2), capture_time=now(), seq=k
            )
