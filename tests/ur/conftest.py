"""UR test fixtures: a simulator reached in memory (virtual time), or over loopback (real time).

`host` (and `next_host()`) names an in-memory host (`drivers.ur.transport`: a
name under `.invalid`): the driver and the simulator talk through the same
stream code as over TCP, without the kernel, so the tests run on the virtual
clock and replay identically. Tests that need real sockets (a simulator in another process, a
peer written by someone else) take `loopback_host()` instead and are marked `peer`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest

from drivers.ur.sim import SimConfig, UrSimulator

# RTDE's port is fixed, so each real-socket simulator gets its own loopback address.
_loopback = itertools.count(2 + (os.getpid() * 7) % 200)
_memory = itertools.count(1)


def loopback_host() -> str:
    """A loopback address of its own, for a simulator on real sockets."""
    return f"127.0.0.{2 + (next(_loopback) - 2) % 240}"


def next_host() -> str:
    """A host of its own in this process's memory (never resolves, never a real robot)."""
    return f"ur-sim-{next(_memory)}.invalid"


@pytest.fixture
def host() -> str:
    return next_host()


@pytest.fixture
def loopback() -> str:
    return loopback_host()


@pytest.fixture
async def sim(host: str) -> AsyncIterator[UrSimulator]:
    async with UrSimulator(SimConfig(host=host, unlock_delay=0.5)) as s:
        yield s
