"""A fake 6-axis force/torque sensor: a slow deterministic wave, for the sensor path.

`stall(seconds)` and `nan_values()` give the faults a real sensor has (a
silent bus, a saturated or broken channel).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import ClassVar

import numpy as np

from drivers.base import ConfiguredDriver, SensorReading, now
from drivers.fake.config import FakeForceSensorConfig
from drivers.lifecycle import Lifecycle, periodic


class FakeForceSensor(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "sensor"
    Config = FakeForceSensorConfig
    spec_field = "name"

    def __init__(self, config: FakeForceSensorConfig | None = None) -> None:
        self.config = config or FakeForceSensorConfig()
        self.name = self.config.name
        self._stalled_until = -math.inf
        self._nan = False

    def stall(self, seconds: float) -> None:
        """No readings for `seconds` from now (controller clock)."""
        self._stalled_until = now() + seconds

    def nan_values(self, on: bool = True) -> None:
        """Report NaN in one channel."""
        self._nan = on

    async def readings(self) -> AsyncIterator[SensorReading]:
        phases = np.arange(6) * 0.5
        async for _ in periodic(1.0 / self.config.rate_hz):
            t = now()
            if t < self._stalled_until:
                continue
            values = np.sin(0.5 * t + phases) * 2.0
            if self._nan:
                values[0] = math.nan
            yield SensorReading(self.name, values, t)
