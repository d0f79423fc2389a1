"""A fake UR5-like arm: first-order joint dynamics, a state stream, and injectable faults.

Good enough to test the controller against: it refuses commands while
"disconnected" (`ConnectionLost`) or protectively stopped (`NotReady`), stops
streaming state while the link is down, delays state and commands by a
configurable latency, and records every command and stop it receives.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import ClassVar, Self

import numpy as np

from drivers.arms import UR5_JOINTS, UR5_LIMITS
from drivers.base import ConfiguredDriver, JointCommand, RobotInfo, RobotState, now
from drivers.errors import ConnectionLost, NotReady
from drivers.fake.config import FakeRobotConfig

log = logging.getLogger(__name__)


class FakeRobot(ConfiguredDriver):
    kind: ClassVar[str] = "robot"
    Config = FakeRobotConfig
    spec_field = "name"

    def __init__(self, config: FakeRobotConfig | None = None) -> None:
        self.config = config or FakeRobotConfig()
        self.name = self.config.name
        self.info = RobotInfo(self.name, UR5_JOINTS, UR5_LIMITS)
        self._q = np.array(self.config.initial, dtype=np.float64)
        self._qd = np.zeros(6)
        self._target = self._q.copy()
        self._t: float | None = None
        self.connected = False
        self.link_up = True
        self.protective_stop = False
        self.commands: deque[tuple[float, JointCommand]] = deque(maxlen=100_000)
        self.stops = 0
        self.holds = 0
        self._link_restored = asyncio.Event()
        self._link_restored.set()

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.connected = True
        self._t = now()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.connected = False

    # -- physics -----------------------------------------------------------
    def _advance(self, t: float) -> None:
        if self._t is None:
            self._t = t
            return
        dt = t - self._t
        if dt <= 0:
            return
        self._t = t
        alpha = 1.0 - np.exp(-dt / self.config.time_constant)
        step = (self._target - self._q) * alpha
        max_step = UR5_LIMITS.max_velocity * dt
        step = np.clip(step, -max_step, max_step)
        self._q = self._q + step
        self._qd = step / dt

    @property
    def positions(self) -> np.ndarray:
        self._advance(now())
        return self._q.copy()

    @property
    def target(self) -> np.ndarray:
        return self._target.copy()

    # -- faults (for tests) ------------------------------------------------
    def disconnect(self) -> None:
        """Simulate a dropped link: no state, commands raise ConnectionLost."""
        self.link_up = False
        self._link_restored = asyncio.Event()

    def reconnect(self) -> None:
        self.link_up = True
        self._link_restored.set()

    def trigger_protective_stop(self) -> None:
        """The arm halts where it is and refuses motion until cleared."""
        self._advance(now())
        self.protective_stop = True
        self._target = self._q.copy()

    def clear_protective_stop(self) -> None:
        self.protective_stop = False

    # -- driver interface --------------------------------------------------
    async def states(self) -> AsyncIterator[RobotState]:
        period = 1.0 / self.config.rate_hz
        t0 = now()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * period - now()))
            if not self.link_up:
                await self._link_restored.wait()
                t0, k = now(), 0
                continue
            capture = now()
            self._advance(capture)
            state = RobotState(
                positions=self._q.copy(),
                velocities=self._qd.copy(),
                capture_time=capture,
                ready=not self.protective_stop,
                mode="PROTECTIVE_STOP" if self.protective_stop else "RUNNING",
                time_source="synthetic",
            )
            if self.config.latency:
                await asyncio.sleep(self.config.latency)
                if not self.link_up:
                    continue
            yield state

    async def command(self, cmd: JointCommand) -> None:
        if not self.connected or not self.link_up:
            raise ConnectionLost(f"{self.name}: link down, command {cmd.seq} not sent")
        if self.protective_stop:
            raise NotReady(f"{self.name}: protective stop")
        if len(cmd.positions) != 6:
            raise ValueError(f"{self.name}: expected 6 joint targets, got {len(cmd.positions)}")
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        self._advance(now())
        self._target = np.asarray(cmd.positions, dtype=np.float64).copy()
        self.commands.append((now(), cmd))

    async def hold(self) -> None:
        if not self.connected or not self.link_up:
            raise ConnectionLost(f"{self.name}: link down, cannot hold")
        self.holds += 1
        self._advance(now())
        self._target = self._q.copy()

    async def stop(self) -> None:
        self.stops += 1
        self._advance(now())
        self._target = self._q.copy()
