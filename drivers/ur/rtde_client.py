"""An asyncio RTDE client: one TCP connection to port 30004.

The controller drops a client that stops draining its data, and a blocking
client would stall the event loop, so reading is a plain coroutine that the
driver runs in its own task. Request/reply exchanges (V, v, O, I, S, P)
happen before streaming or while data packets may still be in flight (P):
data met while waiting for a reply is skipped, text messages are logged.

Text messages come from the robot, at whatever rate it (or a faulty or
hostile peer) sends them, and are handled on the event loop: the log gets at
most `TEXT_LOG_BURST` lines per `TEXT_LOG_WINDOW` seconds, each cut to
`TEXT_MAX_CHARS` printable characters, and a count of the lines left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from drivers.bounded import within
from drivers.errors import ConnectionLost, ProtocolError
from drivers.ur import rtde_codec as codec
from drivers.ur import transport
from drivers.ur.rtde_codec import Recipe

log = logging.getLogger(__name__)

RTDE_PORT = 30004
_LEVEL_TO_LOG = {
    "EXCEPTION": logging.ERROR,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
}

TextHandler = Callable[[str, str, str], None]

TEXT_LOG_BURST = 10  # lines ...
TEXT_LOG_WINDOW = 1.0  # ... per this many seconds
TEXT_MAX_CHARS = 200


def _printable(text: str, limit: int = TEXT_MAX_CHARS) -> str:
    """Cut to `limit` characters; control characters (a forged log line) become '?'."""
    cut = text[:limit]
    clean = "".join(c if c.isprintable() else "?" for c in cut)
    return clean + (f"... [{len(text) - limit} more chars]" if len(text) > limit else "")


class TextThrottle:
    """Lets through at most `burst` lines per `window` seconds and counts the rest."""

    def __init__(self, burst: int = TEXT_LOG_BURST, window: float = TEXT_LOG_WINDOW) -> None:
        self.burst, self.window = burst, window
        self.suppressed_total = 0
        self._window_start = -float("inf")
        self._count = 0
        self._suppressed = 0

    def admit(self, t: float) -> bool:
        """Log the line that arrived at time `t`? Counts it as suppressed if not."""
        if t - self._window_start >= self.window:
            self._window_start, self._count = t, 0
        self._count += 1
        if self._count <= self.burst:
            return True
        self._suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self) -> int:
        """Lines suppressed since the last flush (the caller reports them)."""
        n, self._suppressed = self._suppressed, 0
        return n


class RtdeClient:
    """Speaks RTDE v2 (falls back to v1 when the controller refuses v2)."""

    def __init__(
        self,
        host: str,
        port: int = RTDE_PORT,
        *,
        timeout: float = 2.0,
        on_text: TextHandler | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.protocol = 0
        self.controller_version: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.output_recipe: Recipe | None = None
        self.input_recipe: Recipe | None = None
        self._on_text = on_text
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._splitter = codec.PacketSplitter()
        self._pending: deque[tuple[int, bytes]] = deque()
        self.text_throttle = TextThrottle()
        self._text_report: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Open the link, agree on a protocol version and read the controller version."""
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await transport.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(
                f"RTDE: cannot connect to {self.host}:{self.port} within {self.timeout:g} s: {exc!r}"
            ) from None
        for version in (2, 1):
            reply = await self._request(
                codec.encode_request_protocol(version), codec.REQUEST_PROTOCOL_VERSION
            )
            if codec.decode_accepted(codec.REQUEST_PROTOCOL_VERSION, reply):
                self.protocol = version
                break
        else:
            raise ProtocolError(f"RTDE: {self.host} accepts neither protocol version 2 nor 1")
        reply = await self._request(codec.encode_get_version(), codec.GET_URCONTROL_VERSION)
        self.controller_version = codec.decode_version(reply)
        log.info(
            "RTDE connected to %s:%d, protocol %d, controller %s",
            self.host,
            self.port,
            self.protocol,
            ".".join(map(str, self.controller_version)),
        )

    async def setup_outputs(self, names: Sequence[str], frequency: float) -> Recipe:
        reply = await self._request(
            codec.encode_setup_outputs(names, frequency, self.protocol), codec.SETUP_OUTPUTS
        )
        self.output_recipe = codec.decode_setup_reply(
            codec.SETUP_OUTPUTS, reply, names, with_id=self.protocol >= 2
        )
        return self.output_recipe

    async def setup_inputs(self, names: Sequence[str]) -> Recipe:
        reply = await self._request(codec.encode_setup_inputs(names), codec.SETUP_INPUTS)
        self.input_recipe = codec.decode_setup_reply(codec.SETUP_INPUTS, reply, names, with_id=True)
        return self.input_recipe

    async def start(self) -> None:
        reply = await self._request(codec.encode_start(), codec.START)
        if not codec.decode_accepted(codec.START, reply):
            raise ProtocolError("RTDE: the controller refused to start streaming (S rejected)")

    async def pause(self) -> None:
        reply = await self._request(codec.encode_pause(), codec.PAUSE)
        if not codec.decode_accepted(codec.PAUSE, reply):
            raise ProtocolError("RTDE: the controller refused to pause streaming (P rejected)")

    async def receive(self) -> dict[str, Any]:
        """The next output data packet, as {variable: value}. Waits as long as it takes:
        the caller bounds it (a stalled stream is noticed by the caller's timeout)."""
        recipe = self.output_recipe
        if recipe is None:
            raise ProtocolError("RTDE: receive() before setup_outputs()")
        while True:
            ptype, payload = await self._next_packet()
            if ptype == codec.DATA_PACKAGE:
                return codec.decode_data(recipe, payload, with_id=self.protocol >= 2)
            if ptype == codec.TEXT_MESSAGE:
                self._text(payload)
                continue
            raise codec.bad_packet(ptype, payload, "unexpected while streaming")

    async def send(self, values: dict[str, Any]) -> None:
        """Write the input registers. Raises ConnectionLost when the link is down."""
        recipe = self.input_recipe
        if recipe is None:
            raise ProtocolError("RTDE: send() before setup_inputs()")
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionLost(f"RTDE link to {self.host} is closed")
        try:
            writer.write(codec.encode_data(recipe, values))
            # Bounded, the timer armed only if the buffer is full and drain() waits:
            # one per command otherwise, each a cost on the tick's cold cache.
            await within(writer.drain(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"RTDE: write to {self.host} failed: {exc!r}") from None

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        if self._text_report is not None:
            self._text_report.cancel()
        self._report_suppressed()
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(0.5):
                await writer.wait_closed()

    # ---------------------------------------------------------------- internals

    def _text(self, payload: bytes) -> None:
        level, source, message = codec.decode_text(payload, self.protocol or 2)
        message, source = _printable(message), _printable(source, 40)
        loop = asyncio.get_running_loop()
        if self.text_throttle.admit(loop.time()):
            log.log(
                _LEVEL_TO_LOG.get(level, logging.INFO),
                "UR %s [%s]: %s",
                _printable(level, 20),
                source,
                message,
            )
        elif self._text_report is None:
            self._text_report = loop.call_later(self.text_throttle.window, self._report_suppressed)
        if self._on_text is not None:
            # every message, cut short: a program consumer may count them all
            self._on_text(level, source, message)

    def _report_suppressed(self) -> None:
        self._text_report = None
        n = self.text_throttle.flush()
        if n:
            log.warning(
                "RTDE %s: %d robot text messages not logged (more than %d per %g s)",
                self.host,
                n,
                self.text_throttle.burst,
                self.text_throttle.window,
            )

    async def _next_packet(self) -> tuple[int, bytes]:
        while not self._pending:
            reader = self._reader
            if reader is None:
                raise ConnectionLost(f"RTDE link to {self.host} is closed")
            try:
                data = await reader.read(65536)
            except OSError as exc:
                raise ConnectionLost(f"RTDE: read from {self.host} failed: {exc!r}") from None
            if not data:
                raise ConnectionLost(f"RTDE: {self.host} closed the connection")
            self._pending.extend(self._splitter.feed(data))
        return self._pending.popleft()

    async def _request(self, packet: bytes, reply_type: int) -> bytes:
        writer = self._writer
        if writer is None:
            raise ConnectionLost(f"RTDE link to {self.host} is closed")
        try:
            writer.write(packet)
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                while True:
                    ptype, payload = await self._next_packet()
                    if ptype == reply_type:
                        return payload
                    if ptype == codec.TEXT_MESSAGE:
                        self._text(payload)
                    elif ptype != codec.DATA_PACKAGE:
                        raise codec.bad_packet(
                            ptype, payload, f"while waiting for {codec.packet_name(reply_type)}"
                        )
        except TimeoutError:
            raise ConnectionLost(
                f"RTDE: no reply to {codec.packet_name(reply_type)} from {self.host}"
                f" within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ConnectionLost(f"RTDE: link to {self.host} failed: {exc!r}") from None
