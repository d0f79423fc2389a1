from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest

from drivers.ur.sim import SimConfig, UrSimulator

# RTDE's port is fixed, so each simulator gets its own loopback address.
_hosts = itertools.count(2 + (os.getpid() * 7) % 200)


def next_host() -> str:
    return f"127.0.0.{2 + (next(_hosts) - 2) % 240}"


@pytest.fixture
def host() -> str:
    return next_host()


@pytest.fixture
async def sim(host: str) -> AsyncIterator[UrSimulator]:
    async with UrSimulator(SimConfig(host=host, unlock_delay=0.5)) as s:
        yield s
