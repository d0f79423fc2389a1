"""`sensor.sim`: the privileged object reading: every cube's pose and the episode's task.

For a scripted expert and for scoring only: a policy that is meant to see
must not be given it. The values' layout is `drivers.sim.task.ObjectReading`
(parse them with `ObjectReading.from_values`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar, Self

from drivers.base import ConfiguredDriver, SensorReading
from drivers.lifecycle import Lifecycle, periodic
from drivers.sim.config import SimSensorConfig
from drivers.sim.task import SENSOR_NAMES
from drivers.sim.world import SimWorld, shared_world


class SimSensor(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "sensor"
    Config = SimSensorConfig
    spec_field = "world"
    #: What each value of a reading is (a recording names its environment state with these).
    value_names: ClassVar[tuple[str, ...]] = SENSOR_NAMES

    def __init__(self, config: SimSensorConfig | None = None) -> None:
        self.config = config or SimSensorConfig()
        self.name = self.config.name
        self._handle = shared_world(self.config.world, self.config.options, who="sensor.sim")

    @property
    def world(self) -> SimWorld:
        return self._handle.world

    async def __aenter__(self) -> Self:
        try:
            await self.world.objects()  # world time 0, if this driver is the first
        except BaseException:
            await self.close()  # a failed connect releases its share of the world
            raise
        return self

    async def _release(self) -> None:
        await self._handle.release()

    async def readings(self) -> AsyncIterator[SensorReading]:
        async for _ in periodic(1.0 / self.config.rate_hz):
            t, reading = await self.world.objects()
            yield SensorReading(self.name, reading.to_values(), t)
