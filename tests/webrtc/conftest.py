"""Fixtures for the WebRTC camera tests: loopback-only ICE, painted senders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.webrtc import ice


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    """Every peer in these tests gathers host candidates on 127.0.0.1 only.

    aioice skips loopback on its own, so a loopback-only machine would form
    no candidate pair; and tests must not touch other interfaces.
    """
    with ice.host_addresses(["127.0.0.1"]):
        yield
