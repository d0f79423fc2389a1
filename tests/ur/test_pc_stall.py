"""A real PC stall against the simulator in its own process: a stop of the driver's own."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from tests.ur.test_peer import _wait_for_sim
from tests.ur.util import make, ready_state, state_where

pytestmark = pytest.mark.peer  # real sockets, a simulator in its own process, real time


@pytest.mark.parametrize("stale_after", [0.5, 2.0], ids=["with-reconnect", "in-session"])
async def test_a_real_pc_stall_is_a_stop_of_our_own(loopback: str, stale_after: float) -> None:
    """The real thing, in real time: the simulator in its own process keeps its clock while
    this process's event loop is blocked for 1 s (a GC pause, a swapping machine)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "drivers.ur.sim", "--host", loopback,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_for_sim(loopback)
        async with make(loopback, connect_timeout=3.0, stale_after=stale_after) as robot:
            await ready_state(robot, 5.0)
            time.sleep(1.0)  # noqa: ASYNC251 - the stall itself: no heartbeat leaves this loop
            # with stale_after 0.5 the data timeout fires too: a reconnect of our own as well
            await state_where(robot, lambda s: not s.ready, 2.0)
            await ready_state(robot, 5.0)
            assert robot.program_starts == 2 and robot._latch is None
            assert robot.connects == (2 if stale_after < 1.0 else 1)
    finally:
        proc.terminate()
        async with asyncio.timeout(10):
            await proc.wait()
