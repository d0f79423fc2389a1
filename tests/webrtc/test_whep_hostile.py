"""The WHEP client against servers that misbehave: where its token goes, what it reads,
and whether its reconnect loop survives.

Two fixture servers on different ports are two origins: the second one
records every Authorization header it receives, so a token that leaks shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers.errors import DriverConfigError
from drivers.webrtc.http_limits import one_line, origin, same_origin
from drivers.webrtc.whep import WhepCamera
from drivers.webrtc.whep_testserver import MISBEHAVIOURS, WhepTestServer
from tests.webrtc.helpers import eventually

pytestmark = pytest.mark.virtual_clock  # both peers on this loop: see conftest.py

FAST = {"backoff_s": 0.05, "backoff_max_s": 0.2, "connect_timeout_s": 10, "watchdog_s": 2.0}


def whep(url: str, **options: object) -> WhepCamera:
    return WhepCamera.from_spec(url, {**FAST, **options})


@asynccontextmanager
async def fixtures(n: int, **kw: object) -> AsyncIterator[list[WhepTestServer]]:
    started = [WhepTestServer("wrist", **kw) for _ in range(n)]  # type: ignore[arg-type]
    try:
        for f in started:
            await f.start()
        yield started
    finally:
        for f in started:
            await f.stop()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_redirect_to_another_origin_never_gets_the_token() -> None:
    async with fixtures(1, token="tk") as [home], fixtures(1) as [foreign]:
        home.redirect_to = foreign.url  # another port: another origin
        cam = whep(f"http://127.0.0.1:{home.port}/moved/whep", token="tk", name="wrist")
        async with cam:
            with pytest.raises(DriverConfigError, match="another origin"):
                async with asyncio.timeout(20):
                    async for _ in cam.frames():
                        pass
        assert foreign.authorizations() == []
        assert not foreign.requests, "the POST itself must not go to the other origin"


async def test_without_a_token_a_redirect_to_another_origin_is_followed() -> None:
    async with fixtures(1) as [home], fixtures(1) as [foreign]:
        home.redirect_to = foreign.url
        cam = whep(f"http://127.0.0.1:{home.port}/moved/whep", name="wrist")
        async with cam:
            await eventually(lambda: cam.newest.version > 5, 15, "frames via the other origin")
        assert foreign.posts == 1


async def test_delete_to_a_location_on_another_origin_carries_no_token() -> None:
    async with fixtures(1, token="tk") as [home], fixtures(1) as [foreign]:
        home.location_base = f"http://127.0.0.1:{foreign.port}"
        cam = whep(home.url, token="tk")
        async with cam:
            await eventually(lambda: cam.newest.version > 5, 15, "frames")
            assert cam.location is not None and cam.location.startswith(home.location_base)
        deletes = [r for r in foreign.requests if r[0] == "DELETE"]
        assert len(deletes) == 1 and deletes[0][2] is None, foreign.requests
        assert foreign.authorizations() == []
        # on its own origin, the token does go along
        assert home.authorizations() == ["Bearer tk"]


@pytest.mark.parametrize("how", MISBEHAVIOURS)
async def test_reconnect_loop_survives_a_misbehaving_server(how: str) -> None:
    """Twice the misbehaviour, then a proper answer: frames arrive, nothing fatal."""
    async with fixtures(1) as [server]:
        server.script = [how, how]
        cam = whep(server.url)
        async with cam:
            await eventually(lambda: cam.newest.version > 5, 30, f"frames after {how}")
            assert cam.fatal is None
            assert cam.failures >= 2 and cam.connects == 1
            assert cam.last_error is not None and "\n" not in cam.last_error
        assert server.posts == 3


async def test_huge_bodies_are_abandoned_not_buffered() -> None:
    """60 MB error and answer bodies: memory does not grow with the body size."""
    async with fixtures(1) as [server]:
        cam = whep(server.url)
        server.script = ["huge_error"] * 3 + ["huge_answer"] * 3
        before = rss_mb()
        async with cam:
            await eventually(lambda: cam.newest.version > 5, 30, "frames after huge bodies")
            grown = rss_mb() - before
        assert cam.failures >= 6
        # 6 x 60 MB offered; a few MB of buffers (and a decoder) is all it may cost
        assert grown < 40, f"RSS grew {grown:.0f} MB"
        assert server.huge_bytes_sent < 6 * 60 * 1024 * 1024 / 4, server.huge_bytes_sent


async def test_404_is_retried_and_401_is_fatal() -> None:
    async with fixtures(1, token="right") as [server]:
        server.script = ["not_found"] * 3
        cam = whep(server.url, token="right")
        async with cam:
            await eventually(lambda: cam.newest.version > 5, 30, "frames once the path exists")
        cam = whep(server.url, token="wrong")
        async with cam:
            with pytest.raises(DriverConfigError, match="401"):
                async with asyncio.timeout(15):
                    async for _ in cam.frames():
                        pass


def test_origin_helpers() -> None:
    assert same_origin("http://h/x", "http://H:80/y")
    assert not same_origin("http://h/x", "https://h/x")
    assert not same_origin("http://h:1/x", "http://h:2/x")
    assert not same_origin("ftp://h/x", "ftp://h/x")
    assert origin("/relative") is None
    assert one_line("a\n\tb\x00c" + "x" * 300).startswith("a b\N{REPLACEMENT CHARACTER}c")
    assert len(one_line("x" * 300)) == 200


def test_whep_config_bounds() -> None:
    with pytest.raises(DriverConfigError, match="backoff_s"):
        WhepCamera.from_spec("http://h/x/whep", {"backoff_s": 20, "backoff_max_s": 10})
    with pytest.raises(DriverConfigError, match="watchdog_s"):
        WhepCamera.from_spec("http://h/x/whep", {"watchdog_s": 1e9})
    with pytest.raises(DriverConfigError, match="ASCII"):
        WhepCamera.from_spec("http://h/x/whep", {"token": "tök"})
    assert "s3cret" not in repr(WhepCamera.from_spec("http://h/x/whep", {"token": "s3cret"}).config)


async def test_whip_publisher_never_follows_a_redirect_with_its_token() -> None:
    from drivers.errors import ProtocolError
    from drivers.webrtc.paint import PaintedTrack
    from drivers.webrtc.publish import WhipPublisher

    async with fixtures(1) as [home], fixtures(1) as [foreign]:
        home.redirect_to = foreign.url
        url = f"http://127.0.0.1:{home.port}/moved/whep"
        with pytest.raises(ProtocolError, match="307"):
            async with WhipPublisher(url, PaintedTrack(30), token="tk"):
                pass
        assert not foreign.requests
