"""A fake 6-axis force/torque sensor: a slow deterministic wave, for the sensor path.

`stall(seconds)` and `nan_values()` give the faults a real sensor has (a
silent bus, a saturated or broken channel).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import ClassVar, Self

import numpy as np

from drivers.base import ConfiguredDriver, SensorReading, now
from drivers.fake.config import FakeForceSensorConfig


class FakeForceSensor(ConfiguredDriver):
    kind: ClassVar[str] = "sensor"
    Config = FakeForceSensorConfig
    spec_field = "name"

    def __init__(self, config: FakeForceSensorConfig | None = None) -> None:
        self.config = config or FakeForceSensorConfig()
        self.name = self.config.name
        self._stalled_until = -math.inf
        self._nan = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def stall(self, seconds: float) -> None:
        """No readings for `seconds` from now (controller clock)."""
        self._stalled_until = now() + seconds

    def nan_values(self, on: bool = True) -> None:
        """Report NaN in one channel."""
        self._nan = on

    async def readings(self) -> AsyncIterator[SensorReading]:
        period = 1.0 / self.config.rate_hz
        t0 = now()
        k = 0
        phases = np.arange(6) * 0.5
        while True:
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * period - now()))
            t = now()
            if t < self._stalled_until:
                continue
            values = np.sin(0.5 * t + phases) * 2.0
            if self._nan:
                values[0] = math.nan
            yield SensorReading(self.name, values, t)
