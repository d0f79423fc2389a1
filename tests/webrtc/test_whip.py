"""WHIP server and camera, with an aiortc publisher on loopback.

On the virtual clock (see conftest.py), but for one real-time copy of the 2 Hz
consumer, marked `peer`.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from drivers.errors import DriverConfigError
from drivers.registry import create
from drivers.webrtc import whip_server
from drivers.webrtc.paint import PaintedTrack, read_frame, unwrap
from drivers.webrtc.publish import WhipPublisher
from drivers.webrtc.whip import WhipCamera
from tests.webrtc.helpers import eventually, slot_fed_by

GOOD_FRAG = "a=ice-ufrag:{ufrag}\r\na=ice-pwd:x\r\na=mid:0\r\n"


def whip(address: str = "127.0.0.1:0/front", **options: object) -> WhipCamera:
    return WhipCamera.from_spec(address, options)


@pytest.mark.virtual_clock
async def test_two_hz_consumer_of_30fps_always_gets_a_fresh_frame() -> None:
    """No backlog: read at 2 Hz for 10 s, every frame is younger than 200 ms."""
    await _two_hz_consumer(reads=20)


@pytest.mark.peer
async def test_two_hz_consumer_on_real_time() -> None:
    """The same for 3 s of real time, as aiortc and its decoder thread really run."""
    await _two_hz_consumer(reads=6)


async def _two_hz_consumer(reads: int) -> None:
    loop = asyncio.get_running_loop()
    cam = whip()
    async with cam, WhipPublisher(cam.url, PaintedTrack(30)), slot_fed_by(cam) as slot:
        await slot.wait_newer(0)
        ages, painted_ages, sources, converted = [], [], set(), 0
        for _ in range(reads):
            await asyncio.sleep(0.5)
            stamped = slot.latest()
            assert stamped is not None
            frame = stamped.value
            now = loop.time()
            ages.append(now - frame.capture_time)
            sources.add(frame.time_source)
            painted = unwrap(read_frame(cam.newest.peek().value.frame), now)
            painted_ages.append(now - painted)
            assert frame.image.shape == (480, 640, 3)
            converted += 1
        assert max(ages) < 0.2, ages
        assert max(painted_ages) < 0.2, painted_ages
        assert "rtcp" in sources, f"no RTCP sender report mapped within {reads / 2:g} s"
        # the camera delivered ~15 frames per read; the slot replaced most of them
        # unread, and only the read ones were converted to RGB
        assert slot.published > 7.5 * reads
        assert slot.replaced_unread > 5 * reads
        assert converted == reads


@pytest.mark.virtual_clock
async def test_rtcp_capture_time_matches_painted_time() -> None:
    loop = asyncio.get_running_loop()
    cam = whip()
    async with cam, WhipPublisher(cam.url, PaintedTrack(30)):
        await eventually(
            lambda: (item := cam.newest.peek()) is not None and item.value.time_source == "rtcp",
            8,
            "an RTCP-mapped frame",
        )
        item = cam.newest.peek().value
        painted = unwrap(read_frame(item.frame), loop.time())
        # the painted time is read before encoding; the RTP time is set at the
        # same frame: they agree to well within a frame interval or two
        assert abs(item.capture - painted) < 0.07
        assert item.capture <= item.arrival


@pytest.mark.virtual_clock
async def test_publisher_killed_makes_camera_stale_then_new_publisher_recovers() -> None:
    loop = asyncio.get_running_loop()
    cam = whip(watchdog_s=1.0)
    async with cam:
        pub = WhipPublisher(cam.url, PaintedTrack(30))
        await pub.__aenter__()
        await eventually(lambda: not cam.stale, 10, "frames from the publisher")
        # kill the sender: no DELETE, the peer connection just goes away
        pc, pub.pc = pub.pc, None
        killed = loop.time()
        await pc.close()
        await eventually(lambda: cam.stale, 5, "the camera to go stale")
        assert loop.time() - killed < 1.0 + 1.0  # watchdog + generous slack
        seq = cam.newest.version
        await asyncio.sleep(0.3)
        assert cam.newest.version == seq, "frames after the sender was killed"
        async with WhipPublisher(cam.url, PaintedTrack(30)):
            await eventually(
                lambda: not cam.stale and cam.newest.version > seq,
                10,
                "frames from a new publisher",
            )
        assert cam.sessions_started == 2


@pytest.mark.virtual_clock
async def test_http_errors_never_disturb_a_running_session() -> None:
    cam = whip()
    other = whip(name="wrist")
    async with cam, other, WhipPublisher(cam.url, PaintedTrack(30)) as pub:
        await eventually(lambda: not cam.stale, 10, "frames")
        base = cam.url.rsplit("/whip/", 1)[0]
        assert pub.location is not None
        sdp = {"Content-Type": "application/sdp"}
        frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
        async with aiohttp.ClientSession() as http:

            async def req(method: str, url: str, data: str = "", headers: dict | None = None):
                async with http.request(method, url, data=data, headers=headers or {}) as r:
                    return r.status, await r.text()

            status, text = await req("POST", cam.url, "v=0\r\ngarbage", sdp)
            assert status == 400 and "malformed SDP" in text
            status, text = await req("POST", cam.url, "x" * 50, sdp)
            assert status == 400
            status, _ = await req("POST", cam.url, "v=0", {"Content-Type": "text/plain"})
            assert status == 415
            status, _ = await req("POST", f"{base}/whip/nobody", "v=0", sdp)
            assert status == 404
            status, _ = await req("DELETE", f"{base}/whip/front/0123456789")
            assert status == 404
            status, _ = await req("PATCH", f"{base}/whip/front/0123456789", "a=x", frag)
            assert status == 404
            status, _ = await req("PATCH", pub.location, "a=ice-ufrag:x", sdp)
            assert status == 415
            status, text = await req(
                "PATCH", pub.location, GOOD_FRAG.format(ufrag="restarted"), frag
            )
            assert status == 422 and "restart" in text
            ufrag = pub.pc.localDescription.sdp.split("a=ice-ufrag:", 1)[1].split()[0]
            status, _ = await req(
                "PATCH",
                pub.location,
                GOOD_FRAG.format(ufrag=ufrag)
                + "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n",
                frag,
            )
            assert status == 204
            status, _ = await req("GET", f"{base}/publish")
            assert status == 200
            # the session survived all of that
            seq = cam.newest.version
            await eventually(lambda: cam.newest.version > seq + 10, 5, "frames to keep coming")
            status, _ = await req("DELETE", pub.location)
            assert status == 200
            await eventually(lambda: cam.session is None, 5, "the session to end")
            pub.location = None


@pytest.mark.virtual_clock
async def test_token_required_beyond_loopback_and_checked() -> None:
    # beyond loopback a token must be configured: none is made up and logged
    with pytest.raises(DriverConfigError, match="needs a bearer token"):
        whip_server.resolve_token("0.0.0.0", None, None)
    with pytest.raises(DriverConfigError, match="token_file"):
        whip("0.0.0.0:0/front")
    assert whip_server.resolve_token("127.0.0.1", None, None) is None
    assert whip_server.resolve_token("0.0.0.0", None, False) is None
    cam = whip(token="s3cret")
    async with cam:
        track = PaintedTrack(30)
        with pytest.raises(Exception, match="401"):
            async with WhipPublisher(cam.url, track):
                pass
        async with WhipPublisher(cam.url, PaintedTrack(30), token="s3cret"):
            await eventually(lambda: not cam.stale, 10, "frames with the right token")


@pytest.mark.virtual_clock
async def test_cameras_share_one_server_per_host_port() -> None:
    a = create("camera", "whip://127.0.0.1:0/front")
    b = create("camera", "whip://127.0.0.1:0/wrist")
    async with a:
        async with b:
            assert a.server is b.server and a.server.users == 2
            assert set(a.server.endpoints) == {"front", "wrist"}
            server = a.server
        assert server.users == 1 and server._runner is not None
        port = server.bound_port
    assert server._runner is None
    # the port is free again: a new camera can bind it
    async with whip(f"127.0.0.1:{port}/front"):
        pass
    with pytest.raises(DriverConfigError, match="two cameras"):
        async with whip(), whip():
            pass


def test_config_parsing() -> None:
    assert whip("0.0.0.0:8080/front", token="t").config.parts() == ("0.0.0.0", 8080, "front")
    assert whip("front").config.parts() == ("127.0.0.1", 8080, "front")
    assert whip("10.0.0.5:9000/whip/wrist", auth=False).name == "wrist"
    assert whip("0.0.0.0:8080/front", name="cam1", token_file="/tmp/t").name == "cam1"
    with pytest.raises(DriverConfigError, match="port"):
        whip("host:http/front")
    with pytest.raises(DriverConfigError, match="camera name"):
        whip("0.0.0.0:8080/")
    with pytest.raises(DriverConfigError, match="watchdog"):
        whip(watchdog_s=0)
    with pytest.raises(DriverConfigError, match="unknown option"):
        whip(tokn="x")
