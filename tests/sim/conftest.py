"""Fixtures of the sim world's tests: a fresh world name per test, and no world may leak."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from drivers.sim.world import open_worlds

_names = itertools.count()


@pytest.fixture
def world_name() -> Iterator[str]:
    """A world name no other test uses; the test must have closed every driver of it."""
    name = f"test-world-{next(_names)}"
    yield name
    assert name not in open_worlds(), f"a driver of world {name!r} was never closed"
