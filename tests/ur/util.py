"""Helpers shared by the UR driver tests (the simulator reached in memory, on virtual time)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from drivers.base import RobotState
from drivers.ur.robot import UR5Robot


def make(host: str, **kw: object) -> UR5Robot:
    opts = {"host": host, "connect_timeout": 2.0, **kw}
    return UR5Robot.from_spec("", opts)


async def until(cond: Callable[[], bool], limit: float = 5.0) -> None:
    """Polls simulator state (plain attributes, no event to wait on)."""
    async with asyncio.timeout(limit):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def state_where(
    robot: UR5Robot, cond: Callable[[RobotState], bool], limit: float = 5.0
) -> RobotState:
    async with asyncio.timeout(limit):
        async for s in robot.states():
            if cond(s):
                return s
    raise AssertionError("states() ended")


async def ready_state(robot: UR5Robot, limit: float = 5.0) -> RobotState:
    return await state_where(robot, lambda s: s.ready, limit)


async def fresh_state(robot: UR5Robot, limit: float = 1.0) -> RobotState:
    """The next state published from now on (not the one already there)."""
    latest = robot.latest_state
    return await state_where(robot, lambda s: s is not latest, limit)
