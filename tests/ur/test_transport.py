"""The in-memory link the UR tests run on keeps what the UR code relies on from TCP.

Order, end of file, reset, refusal, back-pressure; real TCP for any host outside
`.invalid`; and a whole driver-and-simulator session that replays identically
on the virtual clock (the reason the link exists).
"""

from __future__ import annotations

import asyncio
import errno

import numpy as np
import pytest

from controller.clock import run_virtual
from drivers.base import JointCommand, now
from drivers.ur import transport
from drivers.ur.sim import SimConfig, UrSimulator
from tests.ur.conftest import next_host
from tests.ur.util import make, ready_state

pytestmark = pytest.mark.virtual_clock

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _accepting(host: str, port: int = 7) -> tuple[object, asyncio.Queue[Streams]]:
    accepted: asyncio.Queue[Streams] = asyncio.Queue()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await transport.start_server(handler, host, port)
    return server, accepted


def test_only_names_under_invalid_live_in_memory() -> None:
    assert transport.is_memory_host("ur-sim-1.invalid")
    assert transport.is_memory_host("UR.Invalid.")
    for real in ("127.0.0.1", "192.168.1.10", "robot.local", "invalid", "x.invalid.example"):
        assert not transport.is_memory_host(real), real


async def test_bytes_arrive_in_order_then_end_of_file() -> None:
    host = next_host()
    server, accepted = await _accepting(host)
    _, writer = await transport.open_connection(host, 7)
    peer_r, peer_w = await accepted.get()
    assert writer.get_extra_info("peername") == (host, 7)
    assert peer_w.get_extra_info("peername") == writer.get_extra_info("sockname")
    for k in range(5):
        writer.write(b"%d," % k)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert await peer_r.read() == b"0,1,2,3,4,"  # everything, then EOF
    peer_w.write(b"late")  # the other end is gone: a reset, not a silent success
    await asyncio.sleep(0)
    with pytest.raises(ConnectionResetError):
        await peer_w.drain()
    server.close()


async def test_an_abort_is_a_reset_after_the_bytes_already_delivered() -> None:
    host = next_host()
    server, accepted = await _accepting(host)
    reader, writer = await transport.open_connection(host, 7)
    _, peer_w = await accepted.get()
    peer_w.write(b"hello\n")
    await asyncio.sleep(0)
    peer_w.transport.abort()
    assert await reader.readline() == b"hello\n"
    with pytest.raises(ConnectionResetError):
        await reader.read(1)
    writer.write(b"x")
    with pytest.raises(ConnectionResetError):
        await writer.drain()
    server.close()


async def test_nothing_listening_is_refused_and_a_port_is_taken_once() -> None:
    host = next_host()
    with pytest.raises(ConnectionRefusedError):
        await transport.open_connection(host, 30004)
    server, accepted = await _accepting(host, 30004)
    with pytest.raises(OSError) as taken:
        await transport.start_server(lambda r, w: None, host, 30004)
    assert taken.value.errno == errno.EADDRINUSE
    _, writer = await transport.open_connection(host, 30004)
    await accepted.get()
    server.close()  # stops listening; the open connection stays up
    with pytest.raises(ConnectionRefusedError):
        await transport.open_connection(host, 30004)
    assert not writer.is_closing()
    writer.close()


async def test_a_reader_that_stops_reading_makes_the_writer_wait() -> None:
    """TCP's back-pressure: what the simulator's slow-client check and drain() rely on."""
    host = next_host()
    server, accepted = await _accepting(host)
    _, writer = await transport.open_connection(host, 7)
    peer_r, _ = await accepted.get()
    chunk = b"x" * 65536
    for _ in range(8):  # the peer's reader buffers 2 x its limit, then pauses its end
        writer.write(chunk)
        await asyncio.sleep(0)
    assert writer.transport.get_write_buffer_size() > 2 * 65536
    drained = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(1.0)
    assert not drained.done()  # nobody reads: the writer waits
    got = 0
    while got < 8 * len(chunk):
        got += len(await peer_r.read(1 << 20))
    await asyncio.wait_for(drained, 1.0)
    assert writer.transport.get_write_buffer_size() == 0
    writer.close()
    server.close()


async def test_an_rtde_write_to_a_peer_that_stopped_reading_is_a_lost_link_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`RtdeClient.send` arms its write bound only when `drain()` waits: never while the
    peer reads, and then a peer that stops reading is `ConnectionLost` after `timeout`."""
    from drivers.errors import ConnectionLost
    from drivers.ur import rtde_codec as codec
    from drivers.ur.rtde_client import RtdeClient

    host = next_host()
    server, accepted = await _accepting(host)
    client = RtdeClient(host, 7, timeout=0.5)
    client._reader, client._writer = await transport.open_connection(host, 7)
    client.input_recipe = codec.Recipe.build(1, ["input_double_register_24"], ["DOUBLE"])
    peer_r, _ = await accepted.get()
    armed = []
    real_timeout = asyncio.timeout

    def counting_timeout(delay):
        armed.append(delay)
        return real_timeout(delay)

    monkeypatch.setattr(asyncio, "timeout", counting_timeout)
    for _ in range(10):
        await client.send({"input_double_register_24": 1.0})
        await peer_r.read(1 << 16)
    assert armed == []  # the buffer never filled: no timer was ever armed
    start = now()
    with pytest.raises(ConnectionLost, match=r"write to .* failed"):
        for _ in range(100_000):  # the peer no longer reads: the buffers fill, drain() waits
            await client.send({"input_double_register_24": 1.0})
    assert 1 <= len(armed) <= 5 and set(armed) == {0.5}  # armed only for the waits
    assert 0.5 <= now() - start < 0.6
    client._writer.close()
    server.close()


async def test_any_other_host_is_real_tcp() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.readline())
        await w.drain()
        w.close()

    server = await transport.start_server(echo, "127.0.0.1", 0)
    assert isinstance(server, asyncio.Server)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await transport.open_connection("127.0.0.1", port)
    assert writer.get_extra_info("socket") is not None  # a kernel socket
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    writer.close()
    server.close()
    await server.wait_closed()


def _session() -> list[tuple[float, float, tuple[float, ...], str]]:
    """Connect, move for 2 s, read what the arm did: every value the run produced."""

    async def main() -> list[tuple[float, float, tuple[float, ...], str]]:
        host = next_host()
        seen = []
        async with UrSimulator(SimConfig(host=host)), make(host) as robot:
            s = await ready_state(robot)
            start = s.positions.copy()
            for k in range(1, 21):
                target = start + np.array([0.01 * k, 0, 0, 0, 0, 0])
                await robot.command(JointCommand(target, 0.1, seq=k))
                await asyncio.sleep(0.1)
                st = await ready_state(robot)
                seen.append((now(), st.capture_time, tuple(st.positions), st.mode))
        return seen

    return run_virtual(main)


def test_a_simulator_session_replays_identically_on_virtual_time() -> None:
    first, second = _session(), _session()
    assert len(first) == 20
    assert first[-1][2][0] > first[0][2][0]  # the arm moved
    assert first == second  # every time stamp and every joint value


def test_the_simulator_program_refuses_an_in_next_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from drivers.ur.sim.__main__ import main as sim_main

    with pytest.raises(SystemExit) as exited:
        sim_main(["--host", "ur-sim.invalid"])
    assert exited.value.code == 2
    assert "--host ur-sim.invalid: a name under .invalid" in capsys.readouterr().err
