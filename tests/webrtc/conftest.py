"""Fixtures for the WebRTC camera tests: loopback-only ICE, aiortc fit for the virtual clock.

Most of these tests run on the virtual clock although aiortc talks over real
loopback sockets (UDP for ICE/DTLS/RTP, TCP for the WHIP/WHEP HTTP exchange):
both peers run on the test's own loop, and `virtual_media` says why that is
sound and what it takes. Tests that need real time (a peer in another process
killed mid-stream, Chromium, the real-time copy of the 2 Hz consumer) are
marked `peer`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.webrtc import ice
from tests.webrtc import virtual_media


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    """Every peer in these tests gathers host candidates on 127.0.0.1 only.

    aioice skips loopback on its own, so a loopback-only machine would form
    no candidate pair; and tests must not touch other interfaces.
    """
    with ice.host_addresses(["127.0.0.1"]):
        yield


@pytest.fixture(autouse=True)
def virtual_time_media(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here: decodes counted, frames painted with the loop's clock."""
    virtual_media.install(monkeypatch)
