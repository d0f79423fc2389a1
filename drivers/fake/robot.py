"""A fake UR5-like arm: first-order joint dynamics, a state stream, and injectable faults.

Six joints with a UR5's names and limits by default; `joints=N` gives an
N-joint arm with UR5-like joints, for policies and tests of other arms.

Good enough to test the controller against: it refuses commands while
"disconnected" (`ConnectionLost`), protectively stopped or stopped by an
operator (`NotReady`), stops streaming state while the link is down, delays
state and commands by a configurable latency, and records every command and
stop it receives.

The faults mirror what a real link does wrong (NaN joint values, a device
clock that is NaN, frozen or ahead of ours, a stop that never returns), and
the arm keeps the ground truth (when each state it reported was really
measured, and where the joints really are) so a test can check the
controller's decisions against what actually happened, not against the
controller's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import ClassVar, Self

import numpy as np

from drivers.arms import arm_info
from drivers.base import ConfiguredDriver, JointCommand, RobotState, now
from drivers.errors import ConnectionLost, NotReady
from drivers.fake.clock_faults import ClockFault, reported_time
from drivers.fake.config import FakeRobotConfig
from drivers.lifecycle import Lifecycle, periodic

log = logging.getLogger(__name__)

#: States remembered for `true_capture_time` (about 30 s at 125 Hz).
_TRUTH_KEPT = 4096


class FakeRobot(Lifecycle, ConfiguredDriver):
    kind: ClassVar[str] = "robot"
    Config = FakeRobotConfig
    spec_field = "name"

    def __init__(self, config: FakeRobotConfig | None = None) -> None:
        self.config = config or FakeRobotConfig()
        self.name = self.config.name
        self.info = arm_info(self.name, self.config.joints)
        self._q = np.array(self.config.initial, dtype=np.float64)
        self._qd = np.zeros(self.info.dof)
        self._target = self._q.copy()
        self._t: float | None = None
        self.connected = False
        self.link_up = True
        self.protective_stop = False
        self.operator_stopped = False
        self.commands: deque[tuple[float, JointCommand]] = deque(maxlen=100_000)
        self.stops = 0
        self.stop_times: list[float] = []
        self.holds = 0
        self.resumes = 0
        self._link_restored = asyncio.Event()
        self._link_restored.set()
        self._nan_positions = False
        self._clock_fault: ClockFault | None = None
        self._frozen_at = math.nan
        self._extra_latency = 0.0
        # id(state) -> (state, true capture time); the state is kept so its id stays unique.
        self._truth: OrderedDict[int, tuple[RobotState, float]] = OrderedDict()

    # -- lifecycle ---------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self.config.connect_delay:
            await asyncio.sleep(self.config.connect_delay)
        self.connected = True
        self._t = now()
        return self

    async def _leave_safe(self) -> None:
        await self.stop()  # `async with` ends here, then in close()

    async def _release(self) -> None:
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
        max_step = self.info.limits.max_velocity * dt
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

    @property
    def ready(self) -> bool:
        """Whether the arm would accept motion now (the ground truth, not a reported state)."""
        return self.link_up and not (self.protective_stop or self.operator_stopped)

    def true_capture_time(self, state: RobotState) -> float | None:
        """When `state` was really measured (None: not a recent state of this arm)."""
        entry = self._truth.get(id(state))
        if entry is None or entry[0] is not state:
            return None
        return entry[1]

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
        self._halt()
        self.protective_stop = True

    def clear_protective_stop(self) -> None:
        self.protective_stop = False

    def operator_stop(self) -> None:
        """A person stopped the arm (pendant, dashboard): it refuses motion until they resume."""
        self._halt()
        self.operator_stopped = True

    def operator_resume(self) -> None:
        self.operator_stopped = False

    async def resume(self) -> None:
        """The driver-level resume an operator asks for (the UR driver has the same call).

        Refused while a protective stop is active or the link is down: only a
        stop that a person made and releases here can be undone this way.
        """
        if not self.link_up:
            raise ConnectionLost(f"{self.name}: link down, cannot resume")
        if self.protective_stop:
            raise NotReady(f"{self.name}: cannot resume: protective stop")
        self.resumes += 1
        self.operator_stopped = False

    def nan_positions(self, on: bool = True) -> None:
        """Report NaN joint positions (a corrupted packet or a broken encoder reading)."""
        self._nan_positions = on

    def clock_fault(self, kind: ClockFault | None) -> None:
        """Corrupt the reported capture times: NaN, frozen at the current time, or 1 s ahead."""
        self._clock_fault = kind
        self._frozen_at = now()

    def set_latency(self, seconds: float) -> None:
        """Deliver states (honestly stamped) `seconds` later than configured, from now on."""
        self._extra_latency = max(0.0, float(seconds))

    def _halt(self) -> None:
        self._advance(now())
        self._target = self._q.copy()

    def _remember(self, state: RobotState, capture: float) -> None:
        self._truth[id(state)] = (state, capture)
        while len(self._truth) > _TRUTH_KEPT:
            self._truth.popitem(last=False)

    # -- driver interface --------------------------------------------------
    async def states(self) -> AsyncIterator[RobotState]:
        ticks = periodic(1.0 / self.config.rate_hz)
        async for _ in ticks:
            if not self.link_up:
                await self._link_restored.wait()
                ticks.restart()  # a relinked arm streams from now, not from its old grid
                continue
            capture = now()
            self._advance(capture)
            positions = self._q.copy()
            if self._nan_positions:
                positions[1] = math.nan
            if self.protective_stop:
                mode = "PROTECTIVE_STOP"
            elif self.operator_stopped:
                mode = "STOPPED by operator"
            else:
                mode = "RUNNING"
            state = RobotState(
                positions=positions,
                velocities=self._qd.copy(),
                capture_time=reported_time(capture, self._clock_fault, self._frozen_at),
                ready=not (self.protective_stop or self.operator_stopped),
                mode=mode,
                time_source="synthetic",
            )
            self._remember(state, capture)
            latency = self.config.latency + self._extra_latency
            if latency:
                await asyncio.sleep(latency)
                if not self.link_up:
                    continue
            yield state

    async def command(self, cmd: JointCommand) -> None:
        if not self.connected or not self.link_up:
            raise ConnectionLost(f"{self.name}: link down, command {cmd.seq} not sent")
        if self.protective_stop:
            raise NotReady(f"{self.name}: protective stop")
        if self.operator_stopped:
            raise NotReady(f"{self.name}: stopped by an operator")
        if len(cmd.positions) != self.info.dof:
            raise ValueError(
                f"{self.name}: expected {self.info.dof} joint targets, got {len(cmd.positions)}"
            )
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        self._advance(now())
        self._target = np.asarray(cmd.positions, dtype=np.float64).copy()
        self.commands.append((now(), cmd))

    async def hold(self) -> None:
        if not self.connected or not self.link_up:
            raise ConnectionLost(f"{self.name}: link down, cannot hold")
        self.holds += 1
        self._halt()

    async def stop(self) -> None:
        self.stops += 1
        self.stop_times.append(now())
        if self.config.stop_hangs:
            await asyncio.Event().wait()  # a wedged link: the stop never arrives
        self._halt()
