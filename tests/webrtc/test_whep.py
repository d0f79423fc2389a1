"""WHEP client against a fixture server behaving like MediaMTX's WHEP endpoint.

In this process on the virtual clock (see conftest.py); the killed sender is a
process of its own, on real time, marked `peer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.errors import DriverConfigError
from drivers.registry import create
from drivers.webrtc.frame_assembly import _BUFFER, MarkerJitterBuffer
from drivers.webrtc.whep import WhepCamera
from drivers.webrtc.whep_testserver import WhepTestServer
from tests.webrtc.helpers import eventually, slot_fed_by

ROOT = Path(__file__).resolve().parents[2]


def whep(url: str, **options: object) -> WhepCamera:
    return WhepCamera.from_spec(url, options)


@pytest.mark.virtual_clock
async def test_whep_pulls_frames_follows_redirect_and_deletes_on_close() -> None:
    fixture = WhepTestServer("wrist", token="tk")
    await fixture.start()
    try:
        url = f"http://127.0.0.1:{fixture.port}/moved/whep"  # 307 to /wrist/whep
        cam = create("camera", "whep+" + url, {"token": "tk", "name": "wrist"})
        async with cam, slot_fed_by(cam) as slot:
            await eventually(lambda: slot.version >= 20, 15, "frames over WHEP")
            frame = slot.latest().value
            assert frame.camera == "wrist" and frame.size == (640, 480)
            assert cam.location is not None and cam.location.startswith(
                f"http://127.0.0.1:{fixture.port}/wrist/whep/"
            )  # relative Location resolved
            assert cam.connects == 1
            # Frames leave the jitter buffer at their marker packet (drivers.webrtc.frame_assembly).
            (receiver,) = [t.receiver for t in cam._pc.getTransceivers()]
            buffer = getattr(receiver, _BUFFER)
            assert isinstance(buffer, MarkerJitterBuffer) and buffer.marked_frames >= 19
        assert fixture.deletes == 1 and not fixture.sessions
    finally:
        await fixture.stop()


@pytest.mark.virtual_clock
async def test_wrong_token_is_a_fatal_configuration_error() -> None:
    fixture = WhepTestServer("wrist", token="right")
    await fixture.start()
    try:
        cam = whep(fixture.url, token="wrong")
        async with cam:
            with pytest.raises(DriverConfigError, match="401"):
                async for _ in cam.frames():
                    pass
    finally:
        await fixture.stop()


@contextlib.asynccontextmanager
async def fixture_process(port: int) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "drivers.webrtc.whep_testserver",
        str(port),
        "wrist",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"ready "), line
        yield proc, int(line.split()[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.peer  # the sender is a process of its own, killed: real sockets, real time
async def test_killed_sender_goes_stale_within_watchdog_and_client_reconnects() -> None:
    loop = asyncio.get_running_loop()
    watchdog = 1.0
    async with fixture_process(0) as (proc, port):
        cam = whep(
            f"http://127.0.0.1:{port}/wrist/whep",
            watchdog_s=watchdog,
            backoff_s=0.2,
            backoff_max_s=0.5,
            connect_timeout_s=5,
        )
        async with cam:
            await eventually(lambda: not cam.stale and cam.newest.version > 10, 20, "first frames")
            proc.send_signal(signal.SIGKILL)  # no DELETE, no DTLS close: the peer just vanishes
            await proc.wait()
            killed = loop.time()
            await eventually(lambda: cam.stale, watchdog + 2.0, "the camera to go stale")
            assert loop.time() - killed <= watchdog + 1.0
            seq = cam.newest.version
            await asyncio.sleep(1.0)
            assert cam.newest.version == seq, "frames while the sender is dead"
            assert cam.failures >= 1  # reconnect attempts against a dead server
            async with fixture_process(port):
                await eventually(
                    lambda: not cam.stale and cam.newest.version > seq,
                    20,
                    "frames after the server returned",
                )
            assert cam.connects == 2


def test_whep_config() -> None:
    assert whep("http://cam-host:8889/wrist/whep").name == "wrist"
    assert whep("https://h/x/y/whep", name="left").name == "left"
    with pytest.raises(DriverConfigError, match="http"):
        whep("ftp://h/x")
    with pytest.raises(DriverConfigError, match="watchdog_s"):
        whep("http://h/x/whep", watchdog_s=-1)
