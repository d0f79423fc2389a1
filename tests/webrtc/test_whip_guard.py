"""The WHIP server refuses to let a hostile local process or web page take a camera.

Each test plays one attacker against a real server and real aiortc peers on
loopback: a foreign Host or Origin (DNS rebinding), a second publisher, an
authorised takeover that never connects, a flood of offers, oversized
bodies, a non-ASCII token, and the token's own handling (never logged,
never generated silently).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import av
import pytest

from drivers.errors import DriverConfigError, ProtocolError
from drivers.webrtc import whip_server
from drivers.webrtc.paint import PaintedTrack
from drivers.webrtc.publish import WhipPublisher
from drivers.webrtc.testsrc import flood, make_offer
from drivers.webrtc.whip import WhipCamera
from drivers.webrtc.whip_guard import HostPolicy, RateLimiter, bearer_matches, fingerprint
from tests.webrtc.helpers import eventually
from tests.webrtc.whip_flood import open_fds

pytestmark = pytest.mark.virtual_clock  # both peers on this loop: see conftest.py

SDP = {"Content-Type": "application/sdp"}


def whip(address: str = "127.0.0.1:0/front", **options: object) -> WhipCamera:
    return WhipCamera.from_spec(address, options)


async def post(
    url: str, body: str | bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers={**SDP, **(headers or {})}) as r,
    ):
        return r.status, await r.text(), dict(r.headers)


@asynccontextmanager
async def live(cam: WhipCamera, **kw: object) -> AsyncIterator[WhipPublisher]:
    """A publisher whose frames are reaching `cam`."""
    async with WhipPublisher(cam.url, PaintedTrack(30), **kw) as pub:  # type: ignore[arg-type]
        await eventually(lambda: not cam.stale and cam.session is not None, 15, "a live publisher")
        yield pub


async def frames_keep_coming(cam: WhipCamera, n: int = 10) -> None:
    seq = cam.newest.version
    await eventually(lambda: cam.newest.version > seq + n, 5, "frames to keep coming")


# --------------------------------------------------------------- Host / Origin


async def test_foreign_host_header_is_refused_and_the_live_publisher_keeps_the_camera() -> None:
    cam = whip()
    async with cam, live(cam):
        session = cam.session
        port = cam.server.bound_port  # type: ignore[union-attr]
        offer = await make_offer()
        status, text, _ = await post(cam.url, offer, {"Host": f"evil.example:{port}"})
        assert status == 403 and "does not name this server" in text, (status, text)
        status, text, _ = await post(cam.url, offer, {"Host": "127.0.0.1:1"})  # wrong port
        assert status == 403, (status, text)
        assert cam.session is session
        await frames_keep_coming(cam)
        async with aiohttp.ClientSession() as http:
            page = cam.url.replace("/whip/front", "/publish")
            async with http.get(page, headers={"Host": f"rebound.example:{port}"}) as r:
                assert r.status == 403
            async with http.get(page) as r:
                assert r.status == 200


async def test_origin_must_be_this_server_and_allowed_hosts_extend_it() -> None:
    cam = whip(allowed_hosts=["robot-pc.local"])
    async with cam:
        port = cam.server.bound_port  # type: ignore[union-attr]
        offer = await make_offer()
        status, text, _ = await post(cam.url, offer, {"Origin": f"http://evil.example:{port}"})
        assert status == 403 and "Origin" in text, (status, text)
        status, _, _ = await post(cam.url, offer, {"Origin": "null"})
        assert status == 403
        # a page served by us (same origin) and a configured name are fine
        status, text, _ = await post(cam.url, offer, {"Origin": f"http://127.0.0.1:{port}"})
        assert status == 201, (status, text)
        status, text, _ = await post(
            cam.url,
            offer,
            {"Host": f"robot-pc.local:{port}", "Origin": f"http://robot-pc.local:{port}"},
        )
        assert status == 201, (status, text)
    with pytest.raises(DriverConfigError, match="allowed_hosts"):
        whip(allowed_hosts=["bad host/x"])


def test_host_policy_by_bind_address() -> None:
    loop_bind = HostPolicy("127.0.0.1", lambda: 8080)
    assert loop_bind.check("localhost:8080", None) is None
    assert loop_bind.check("[::1]:8080", "http://127.0.0.1:8080") is None
    assert loop_bind.check("localhost", None) is not None  # port 80 is not ours
    assert loop_bind.check("10.0.0.5:8080", None) is not None
    assert loop_bind.check(None, None) is not None
    assert loop_bind.check("a b:8080", None) is not None
    assert loop_bind.check("localhost:8080", "http://localhost:8080/x") is not None
    anywhere = HostPolicy("0.0.0.0", lambda: 8080)
    assert anywhere.check("192.168.1.7:8080", "http://192.168.1.7:8080") is None
    assert anywhere.check("attacker.example:8080", None) is not None
    named = HostPolicy("0.0.0.0", lambda: 8080, HostPolicy.validate(["Robot.Local", "[::1]:9"]))
    assert named.check("robot.local:443", "https://robot.local") is None
    assert named.check("[::1]:9", None) is None


# --------------------------------------------------------------- one publisher


async def test_second_publisher_gets_409_and_the_live_one_keeps_feeding() -> None:
    cam = whip()
    async with cam, live(cam):
        session = cam.session
        with pytest.raises(ProtocolError, match="409"):
            async with WhipPublisher(cam.url, PaintedTrack(30)):
                pass
        assert cam.session is session and cam.sessions_started == 1
        await frames_keep_coming(cam)


async def test_takeover_needs_the_token_and_happens_only_once_the_new_peer_connects() -> None:
    cam = whip(token="tk", allow_takeover=True, connect_timeout_s=1.0, watchdog_s=2.0)
    async with cam, live(cam, token="tk"):
        first = cam.session
        assert first is not None
        server = cam.server
        assert server is not None
        offer = await make_offer()  # its peer is gone: it will never connect
        status, _, _ = await post(cam.url, offer)
        assert status == 401
        status, _, headers = await post(cam.url, offer, {"Authorization": "Bearer tk"})
        assert status == 201
        pending_id = headers["Location"].rsplit("/", 1)[1]
        assert server.sessions[pending_id].pending
        # the old publisher keeps the camera while the new one is pending...
        await frames_keep_coming(cam, 15)
        assert cam.session is first
        # ...and the pending session is closed, sockets and all, when it never connects
        await eventually(lambda: pending_id not in server.sessions, 5, "the pending session to end")
        assert cam.session is first and not first.closed
        # a real publisher with the token does take over, once connected
        async with WhipPublisher(cam.url, PaintedTrack(30), token="tk"):
            await eventually(lambda: cam.session is not first, 15, "the takeover")
            await eventually(lambda: first.closed, 5, "the old session to close")
            await frames_keep_coming(cam)
        assert cam.sessions_started == 2
    with pytest.raises(DriverConfigError, match="allow_takeover needs a token"):
        whip(allow_takeover=True)


async def test_without_allow_takeover_even_the_token_gets_409() -> None:
    cam = whip(token="tk")
    async with cam, live(cam, token="tk"):
        with pytest.raises(ProtocolError, match="409"):
            async with WhipPublisher(cam.url, PaintedTrack(30), token="tk"):
                pass


class FreezingTrack(PaintedTrack):
    """Paints frames until `freeze()`, then sends nothing while the peer stays up."""

    def __init__(self) -> None:
        super().__init__(30)
        self.frozen = asyncio.Event()

    def freeze(self) -> None:
        self.frozen.set()

    async def recv(self) -> av.VideoFrame:
        if self.frozen.is_set():
            await asyncio.Event().wait()
        return await super().recv()


async def test_a_stale_publisher_does_not_lock_out_the_next_one() -> None:
    cam = whip(watchdog_s=1.0)
    track = FreezingTrack()
    async with cam, WhipPublisher(cam.url, track):
        await eventually(lambda: not cam.stale, 15, "frames")
        track.freeze()
        await eventually(lambda: cam.live_session() is None, 5, "the publisher to go stale")
        async with WhipPublisher(cam.url, PaintedTrack(30)):
            await eventually(
                lambda: not cam.stale and cam.sessions_started == 2,
                15,
                "frames from the next publisher",
            )


# --------------------------------------------------------------- limits


async def test_offer_flood_is_bounded_and_sockets_return_to_baseline() -> None:
    """100 offers in a row from one address: a couple of pending sessions at most,
    429/503 for the rest, and every socket released once the pending ones expire."""
    cam = whip(connect_timeout_s=1.0)
    async with cam:
        server = cam.server
        assert server is not None
        await asyncio.sleep(0.2)
        baseline = open_fds()
        most_pending = 0

        async def watch() -> None:
            nonlocal most_pending
            while True:
                most_pending = max(most_pending, server.pending_count())
                await asyncio.sleep(0.005)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            statuses = await flood(cam.url, 100)
        finally:
            watcher.cancel()
        assert set(statuses) <= {"201", "429", "503"}, statuses
        assert statuses.get("429", 0) >= 70, statuses
        assert statuses.get("503", 0) >= 1, statuses
        assert most_pending <= whip_server.LIMITS.pending_per_camera
        # generous bound: expiry after 1 s, then aiortc closes its transports
        await eventually(
            lambda: open_fds() <= baseline + 2 and not server.sessions,
            15,
            f"open fds back to {baseline} (now {open_fds()})",
        )


async def test_offers_that_send_no_video_create_nothing() -> None:
    cam = whip()
    async with cam:
        await asyncio.sleep(0.2)
        baseline = open_fds()
        offer = await make_offer("recvonly")
        for _ in range(5):
            status, text, _ = await post(cam.url, offer)
            assert status == 400 and "sends no video" in text, (status, text)
        assert not cam.server.sessions  # type: ignore[union-attr]
        await eventually(lambda: open_fds() <= baseline + 2, 10, "fds back to the baseline")


async def test_flood_against_a_live_publisher_gets_409_and_429_only() -> None:
    cam = whip()
    async with cam, live(cam):
        session = cam.session
        statuses = await flood(cam.url, 60)
        assert set(statuses) <= {"409", "429"}, statuses
        assert cam.session is session
        await frames_keep_coming(cam)


async def test_pending_sessions_are_capped_per_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whip_server, "LIMITS", whip_server.Limits(post_burst=100))
    names = ["a", "b", "c", "d", "e"]
    cams = [whip(f"127.0.0.1:0/{n}", connect_timeout_s=5.0) for n in names]
    async with cams[0], cams[1], cams[2], cams[3], cams[4]:
        assert len({c.server for c in cams}) == 1
        offer = await make_offer()
        results = [await post(c.url, offer) for c in cams for _ in range(2)]
        statuses = [r[0] for r in results]
        assert statuses.count(201) == 8 and statuses.count(503) == 2, statuses
        assert all(r[2].get("Retry-After") for r in results if r[0] == 503)
        # a third offer to one camera is over the per-camera cap
        status, _, _ = await post(cams[0].url, offer)
        assert status == 503


async def test_post_rate_is_limited_per_client_with_retry_after() -> None:
    cam = whip()
    async with cam:
        statuses, retry = [], None
        for _ in range(whip_server.LIMITS.post_burst + 2):
            status, _, headers = await post(cam.url, "v=0 not an offer")
            statuses.append(status)
            retry = headers.get("Retry-After", retry)
        assert statuses[: whip_server.LIMITS.post_burst] == [400] * whip_server.LIMITS.post_burst
        assert statuses[-1] == 429 and retry is not None and int(retry) >= 1


def test_rate_limiter_refills_and_forgets() -> None:
    now = [0.0]
    rl = RateLimiter(2, 1.0, lambda: now[0], max_clients=3)
    assert rl.take("a") == 0 and rl.take("a") == 0
    assert rl.take("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert rl.take("a") == 0
    for k in "bcdefg":
        rl.take(k)
    assert len(rl._buckets) <= 3


async def test_bodies_beyond_64_kib_get_413() -> None:
    cam = whip()
    async with cam:
        big = "v=0\r\n" + "a=x\r\n" * 20_000
        status, text, _ = await post(cam.url, big)
        assert status == 413 and "64 KiB" in text

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked upload
            for _ in range(40):
                yield b"a=" + b"x" * 4094

        status, _, _ = await post(cam.url, chunks())  # type: ignore[arg-type]
        assert status == 413


# --------------------------------------------------------------- tokens


async def test_non_ascii_bearer_token_is_a_401_not_a_500() -> None:
    cam = whip(token="s3cret")
    async with cam:
        port = cam.server.bound_port  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"v=0\r\n"
        writer.write(
            b"POST /whip/front HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port
            + "Authorization: Bearer s3crét\r\n".encode()
            + b"Authorization-Extra: \xff\xfe\r\n"
            + b"Content-Type: application/sdp\r\nContent-Length: %d\r\n" % len(body)
            + b"Connection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert not bearer_matches("Bearer s3cr\udcc3\udca9t", "s3cret")
    assert not bearer_matches("Bearer \ud800", "s3cret")  # a lone surrogate is just wrong
    assert bearer_matches("bearer  s3cret ", "s3cret")


def test_no_token_is_made_up_beyond_loopback() -> None:
    with pytest.raises(DriverConfigError, match="needs a bearer token"):
        whip("0.0.0.0:0/front")
    with pytest.raises(DriverConfigError, match="visible ASCII"):
        whip(token="tök en")
    assert "s3cret" not in repr(whip(token="s3cret").config)  # configs end up in logs


async def test_token_file_is_generated_0600_and_only_its_fingerprint_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "whip.token"
    caplog.set_level(logging.DEBUG)
    token = whip_server.resolve_token("0.0.0.0", None, None, str(path))
    assert token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert token not in caplog.text and fingerprint(token) in caplog.text
    # the same file gives the same token next time; never overwritten
    assert whip_server.resolve_token("0.0.0.0", None, None, str(path)) == token
    cam = whip("127.0.0.1:0/front", token_file=str(path))
    async with cam:
        with pytest.raises(ProtocolError, match="401"):
            async with WhipPublisher(cam.url, PaintedTrack(30)):
                pass
        async with live(cam, token=token):
            pass
    assert token not in caplog.text
    os.chmod(path, 0o644)
    with pytest.raises(DriverConfigError, match="chmod 600"):
        whip_server.resolve_token("0.0.0.0", None, None, str(path))
    with pytest.raises(DriverConfigError, match="token_file"):
        whip_server.resolve_token("0.0.0.0", None, None, str(tmp_path / "no" / "such"))
