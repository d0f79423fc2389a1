"""A hostile or broken peer never ends the driver's reconnects, and never hangs its exit.

Dashboard replies are read against tiny asyncio servers written here; the
driver runs against the simulator; all in memory, on virtual time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from drivers.base import now
from drivers.errors import ConnectionLost, ProtocolError
from drivers.ur import robot as robot_mod
from drivers.ur import transport as ur_transport
from drivers.ur.dashboard import MAX_LINE, DashboardClient
from drivers.ur.robot import UR5Robot
from drivers.ur.sim import SimConfig, UrSimulator
from tests.drivers.helpers import end_stubborn, stubborn
from tests.ur.conftest import next_host
from tests.ur.util import fresh_state, make, ready_state, until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(host: str, handler: Handler, port: int = 29999) -> AsyncIterator[None]:
    srv = await ur_transport.start_server(handler, host, port)
    try:
        yield
    finally:
        srv.close()


def greets_then(reply: bytes, *, then_close: bool = False) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Connected: Universal Robots Dashboard Server\n")
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        if then_close:
            writer.close()
        else:
            await reader.read()  # keep the connection open until the client leaves

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accepts, never greets


async def endless_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"x" * 200 * 1024)  # 200 KiB, no newline
    await writer.drain()
    await reader.read()


# ------------------------------------------------------------------ dashboard client


@pytest.mark.virtual_clock
@pytest.mark.parametrize(
    "handler,error,match",
    [
        (greets_then(b"y" * 200 * 1024), ProtocolError, f"longer than {MAX_LINE} bytes"),
        (greets_then(b"Robotmode: \xff\xfeRUNNING\n"), ProtocolError, "not UTF-8"),
        (
            greets_then(b"Robotmode: RUNN", then_close=True),
            ConnectionLost,
            "closed before the end of the reply",
        ),
    ],
    ids=["200KiB-line", "not-utf8", "eof-mid-line"],
)
async def test_bad_replies_are_clear_errors(host: str, handler: Handler, error: type, match: str):
    async with server(host, handler), DashboardClient(host, timeout=2.0) as dash:
        with pytest.raises(error, match=match) as err:
            await dash.robot_mode()
        assert "\n" not in str(err.value)
        with pytest.raises(ConnectionLost, match="not connected"):
            await dash.robot_mode()  # the out-of-step stream was dropped


@pytest.mark.virtual_clock
async def test_endless_or_missing_greeting(host: str) -> None:
    async with server(host, endless_banner):
        with pytest.raises(ProtocolError, match=f"greeting longer than {MAX_LINE} bytes"):
            await DashboardClient(host, timeout=2.0).connect()
    other = next_host()
    async with server(other, silent):
        t0 = now()
        with pytest.raises(ConnectionLost, match=r"no greeting within 0\.3 s"):
            await DashboardClient(other, timeout=0.3).connect()
        assert now() - t0 < 2.0


# ------------------------------------------------------------------ the driver around it


def sim_without_dashboard(host: str, **kw: object) -> UrSimulator:
    """The simulator with its dashboard moved away, so a test's own server takes 29999."""
    return UrSimulator(SimConfig(host=host, dashboard_port=29998, **kw))


@pytest.mark.virtual_clock
@pytest.mark.parametrize(
    "handler",
    [silent, endless_banner, greets_then(b"\xff" * 10 + b"\n")],
    ids=["silent", "endless", "not-utf8"],
)
async def test_a_broken_dashboard_is_a_warning(
    host: str, handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    async with sim_without_dashboard(host), server(host, handler):
        with caplog.at_level(logging.WARNING, logger="drivers.ur.robot"):
            async with make(host, connect_timeout=2.0) as robot:
                await ready_state(robot)
        assert "dashboard unavailable" in caplog.text
        assert robot.session_failures == 0


@pytest.mark.virtual_clock
async def test_local_control_still_fails_the_connect(host: str) -> None:
    async with UrSimulator(SimConfig(host=host, remote_control=False)):
        with pytest.raises(ConnectionLost, match="Local control"):
            async with make(host, connect_timeout=1.0):
                pass


@pytest.mark.virtual_clock
async def test_the_supervisor_survives_any_exception(
    sim: UrSimulator, host: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make(host, reconnect_min=0.05) as robot:
        await ready_state(robot)
        real = robot._publish
        bugs = [ZeroDivisionError("a bug"), KeyError("another"), ValueError("and another")]

        def buggy(values):  # one bug per session, three sessions in a row
            if bugs:
                raise bugs.pop(0)
            return real(values)

        monkeypatch.setattr(robot, "_publish", buggy)
        with caplog.at_level(logging.ERROR, logger="drivers.ur.robot"):
            await until(lambda: robot.connects >= 2 and not bugs, 5.0)
        assert robot.session_failures == 3
        for name in ("ZeroDivisionError", "KeyError", "ValueError"):
            assert name in caplog.text
        await ready_state(robot, 5.0)  # still reconnecting: the link is back


@pytest.mark.virtual_clock
async def test_a_failing_restart_latches_instead_of_dying(
    sim: UrSimulator, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make(host) as robot:
        await ready_state(robot)

        async def broken_upload(*a: object, **k: object) -> None:
            raise RuntimeError("script port exploded")

        monkeypatch.setattr(robot_mod.program, "upload", broken_upload)
        sim.ignore_inputs(0.7)  # our watchdog stops the program: a restart of our own
        await until(lambda: robot._latch is not None, 5.0)
        state = await fresh_state(robot)
        assert not state.ready
        assert "restart" in state.mode and "script port exploded" in state.mode
        assert "resume needed" in state.mode
        assert robot._supervisor is not None and not robot._supervisor.done()


# ------------------------------------------------------------------ bounded exits


@pytest.mark.virtual_clock
async def test_stop_and_exit_are_bounded_on_a_half_open_link(sim: UrSimulator, host: str):
    robot = make(host, stop_timeout=0.3)
    async with robot:
        await ready_state(robot)
        sim.go_silent()  # the connection stays up; nothing is read or answered any more
        t0 = now()
        await robot.stop()
        assert now() - t0 <= 0.3 + 1e-6
        t0 = now()
    # __aexit__ = stop() + close()
    # the owned tasks are cancelled together: one bound for all of them
    assert now() - t0 <= 0.3 + robot.cancel_bound + 0.5 + 1e-6


@pytest.mark.virtual_clock
async def test_close_does_not_hang_on_a_task_that_ignores_cancellation(
    sim: UrSimulator, host: str
) -> None:
    robot: UR5Robot = make(host)
    await robot.__aenter__()
    await ready_state(robot)

    release = asyncio.Event()
    task = robot.spawn(stubborn(release), "stubborn")  # owned, like the driver's own tasks
    t0 = now()
    await robot.__aexit__(None, None, None)
    assert now() - t0 <= robot.config.stop_timeout + robot.cancel_bound + 1e-6
    assert task.cancelling() >= 1  # close did cancel it
    assert not task.done()  # left behind, not waited for
    assert robot._supervisor is None and robot.closed
    await robot.close()  # a second close returns at once
    assert now() - t0 <= robot.config.stop_timeout + robot.cancel_bound + 1e-6
    await end_stubborn(task, release)
