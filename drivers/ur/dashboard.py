"""Dashboard server client (port 29999): one text line per command, one line per reply.

Replies are read with a bound on their length: the peer is a network service,
and an endless line must become a clear `ProtocolError`, never an exception
from deep inside asyncio that ends the caller's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from drivers.errors import ConnectionLost, DriverError, ProtocolError
from drivers.ur import transport

log = logging.getLogger(__name__)

DASHBOARD_PORT = 29999
#: Longest reply line accepted; real replies are well under 200 bytes.
MAX_LINE = 4096


class DashboardClient:
    def __init__(self, host: str, port: int = DASHBOARD_PORT, *, timeout: float = 2.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self.banner = ""

    async def __aenter__(self) -> DashboardClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await transport.open_connection(
                    self.host, self.port, limit=MAX_LINE
                )
                self.banner = await self._read_line(self._reader, "greeting")
        except (OSError, TimeoutError) as exc:
            await self.close()
            what = (
                f"no greeting within {self.timeout:g} s"
                if isinstance(exc, TimeoutError)
                else repr(exc)
            )
            raise ConnectionLost(
                f"UR dashboard {self.host}:{self.port}: cannot connect: {what}"
            ) from None
        except DriverError:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(0.5):
                    await writer.wait_closed()

    async def command(self, text: str) -> str:
        async with self._lock:
            if self._writer is None or self._reader is None:
                raise ConnectionLost(f"UR dashboard {self.host}: not connected")
            try:
                self._writer.write(text.encode("utf-8") + b"\n")
                async with asyncio.timeout(self.timeout):
                    await self._writer.drain()
                    reply = await self._read_line(self._reader, f"reply to {text!r}")
            except (OSError, TimeoutError) as exc:
                await self.close()  # a late reply would answer the next command
                raise ConnectionLost(
                    f"UR dashboard {self.host}: {text!r} failed: {exc!r}"
                ) from None
            except DriverError:
                # the stream is out of step now (a partial or endless line): drop it
                await self.close()
                raise
            log.debug("dashboard %r -> %r", text, reply)
            return reply

    async def _read_line(self, reader: asyncio.StreamReader, what: str) -> str:
        """One reply line, at most MAX_LINE bytes of UTF-8, without its line ending."""
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionLost(
                f"UR dashboard {self.host}: connection closed before the end of the {what}"
                + (f" ({len(exc.partial)} bytes without a newline)" if exc.partial else "")
            ) from None
        except (asyncio.LimitOverrunError, ValueError):
            raise ProtocolError(
                f"UR dashboard {self.host}: {what} longer than {MAX_LINE} bytes without a newline"
            ) from None
        try:
            return line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"UR dashboard {self.host}: {what} is not UTF-8 (byte 0x{line[exc.start]:02x}"
                f" at {exc.start})"
            ) from None

    async def _expect(self, text: str, ok_prefix: str) -> str:
        reply = await self.command(text)
        if not reply.lower().startswith(ok_prefix.lower()):
            raise DriverError(f"UR dashboard: {text!r} refused: {reply!r}")
        return reply

    async def power_on(self) -> None:
        await self._expect("power on", "Powering on")

    async def brake_release(self) -> None:
        await self._expect("brake release", "Brake releasing")

    async def play(self) -> None:
        await self._expect("play", "Starting program")

    async def stop(self) -> None:
        reply = await self.command("stop")
        if not reply.startswith("Stopped") and "Failed" not in reply:
            raise DriverError(f"UR dashboard: 'stop' refused: {reply!r}")

    async def close_safety_popup(self) -> None:
        await self.command("close safety popup")

    async def robot_mode(self) -> str:
        return (await self.command("robotmode")).split(":", 1)[-1].strip()

    async def safety_status(self) -> str:
        """Safety status name; falls back to `safetymode` on CB3, which lacks `safetystatus`."""
        reply = await self.command("safetystatus")
        if reply.lower().startswith("could not understand"):
            reply = await self.command("safetymode")
        return reply.split(":", 1)[-1].strip()

    async def program_state(self) -> str:
        return (await self.command("programState")).split(" ", 1)[0].strip()

    async def is_in_remote_control(self) -> bool | None:
        """None when the controller does not know the command (CB3, old e-Series)."""
        reply = (await self.command("is in remote control")).strip().lower()
        if reply in ("true", "false"):
            return reply == "true"
        return None

    async def unlock_protective_stop(self, wait: float = 0.0) -> bool:
        """Unlock after waiting `wait` s (the caller knows when the stop happened: UR
        refuses an unlock sooner than 5 s after it). False when the controller refuses."""
        if wait > 0:
            await asyncio.sleep(wait)
        await self.close_safety_popup()
        reply = await self.command("unlock protective stop")
        return reply.lower().startswith("protective stop releasing")
