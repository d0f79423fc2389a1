"""The simulator checked by an independently written RTDE client: ur-rtde's RTDEReceiveInterface.

The simulator runs as a user would start it (`python -m drivers.ur.sim`), and
the peer runs in its own process: its blocking C++ calls hold the GIL.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time

import pytest

from drivers.ur.rtde_client import RtdeClient

pytestmark = pytest.mark.peer

PEER = textwrap.dedent(
    """
    import json, sys, time
    import rtde_receive
    host = sys.argv[1]
    r = rtde_receive.RTDEReceiveInterface(host, 125.0)
    t0 = r.getTimestamp()
    time.sleep(0.5)
    out = dict(q=r.getActualQ(), mode=r.getRobotMode(), safety=r.getSafetyMode(),
               dt=r.getTimestamp() - t0, pose=r.getActualTCPPose(),
               connected=r.isConnected())
    r.disconnect()
    print(json.dumps(out))
    """
)


def _peer_available() -> str | None:
    try:
        import rtde_receive  # noqa: F401
    except ImportError as exc:
        return f"ur-rtde is not installed for Python {sys.version.split()[0]}: {exc}"
    return None


async def _wait_for_sim(host: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        client = RtdeClient(host, timeout=0.5)
        try:
            await client.connect()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
        finally:
            await client.close()


async def test_ur_rtde_reads_the_simulator(loopback: str) -> None:
    reason = _peer_available()
    if reason:
        pytest.skip(reason)
    sim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "drivers.ur.sim",
        "--host",
        loopback,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_for_sim(loopback)
        peer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PEER,
            loopback,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            stdout, stderr = await peer.communicate()
        assert peer.returncode == 0, stderr.decode()
        out = json.loads(stdout.decode().strip().splitlines()[-1])
    finally:
        sim.terminate()
        async with asyncio.timeout(10):
            await sim.wait()
    assert out["connected"]
    assert out["mode"] == 7 and out["safety"] == 1  # RUNNING, NORMAL
    assert out["q"] == pytest.approx([0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0])
    assert 0.3 < out["dt"] < 2.0  # the robot clock advanced while the peer streamed
    assert out["pose"][2] != 0.0
