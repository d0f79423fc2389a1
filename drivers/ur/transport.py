"""How the UR clients reach a controller: real TCP, or a link inside this process.

The RTDE, dashboard and script-port clients open their connections through
`open_connection`, and the simulator listens through `start_server`. Both
default to real TCP. A host under the `.invalid` top-level domain (RFC 6761:
it never resolves, so it can never shadow a real robot) is instead a listener
in this process's memory, on the running event loop.

Why: a simulator on loopback sockets makes every UR test wait on the kernel in
real time, and the virtual clock cannot see a socket's bytes in flight, so a
time jump can land while a packet is on its way. Over the in-memory link each
write is delivered by a callback on the same loop: on the virtual clock a
whole simulator session costs no real time and replays identically.

The link is a pair of `asyncio.Transport` objects under the standard
`StreamReader`/`StreamWriter`, so the clients and the simulator run exactly
the code they run over TCP. It keeps what the UR code relies on from TCP:
bytes arrive in order, may coalesce, and never before the writer's next
await; a reader that stops reading makes the writer's buffer grow until
`drain()` waits (back-pressure); `close()` is an end of file after the data,
`abort()` a reset that the peer reads as `ConnectionResetError`; nothing
listening is `ConnectionRefusedError`.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

#: Where the in-memory hosts live (RFC 6761 reserves it: never a real host).
MEMORY_DOMAIN = ".invalid"
#: asyncio's own default StreamReader limit.
DEFAULT_LIMIT = 2**16

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]

_client_ports = itertools.count(49152)  # the IANA ephemeral range, as a kernel would pick
_listeners: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, int], MemoryServer]
] = weakref.WeakKeyDictionary()


def is_memory_host(host: str) -> bool:
    """True for a host that lives in this process's memory (a name under `.invalid`)."""
    return host.rstrip(".").lower().endswith(MEMORY_DOMAIN)


async def open_connection(
    host: str, port: int, *, limit: int = DEFAULT_LIMIT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection`, or the in-memory link for a host under `.invalid`."""
    if not is_memory_host(host):
        return await asyncio.open_connection(host, port, limit=limit)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0)  # a connect always yields to the loop, as a real one does
    server = _listeners.get(loop, {}).get((_key(host), port))
    if server is None:
        raise ConnectionRefusedError(
            errno.ECONNREFUSED, f"nothing listens in memory on {host}:{port}"
        )
    client_addr = ("memory-client", next(_client_ports))
    client = MemoryTransport(loop, sockname=client_addr, peername=(host, port))
    accepted = MemoryTransport(loop, sockname=(host, port), peername=client_addr)
    client.link(accepted)
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    client.set_protocol(protocol)
    protocol.connection_made(client)
    server.accept(accepted)
    return reader, asyncio.StreamWriter(client, protocol, reader, loop)


async def start_server(
    handler: ClientHandler, host: str, port: int, *, limit: int = DEFAULT_LIMIT
) -> asyncio.Server | MemoryServer:
    """`asyncio.start_server`, or an in-memory listener for a host under `.invalid`."""
    if not is_memory_host(host):
        return await asyncio.start_server(handler, host, port, limit=limit)
    loop = asyncio.get_running_loop()
    table = _listeners.setdefault(loop, {})
    key = (_key(host), port)
    if key in table:
        raise OSError(errno.EADDRINUSE, f"{host}:{port} is already listened on in memory")
    server = MemoryServer(loop, key, handler, limit)
    table[key] = server
    return server


def _key(host: str) -> str:
    return host.rstrip(".").lower()


class MemoryServer:
    """The part of `asyncio.Server` the simulator uses: accept, close, wait_closed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[str, int],
        handler: ClientHandler,
        limit: int,
    ) -> None:
        self._loop, self._key, self._handler, self._limit = loop, key, handler, limit
        self._serving = True

    def is_serving(self) -> bool:
        return self._serving

    def accept(self, transport: MemoryTransport) -> None:
        """A new connection: the handler runs on its own task, as with `asyncio.start_server`."""
        reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, self._handler, loop=self._loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def close(self) -> None:
        """Stop listening; connections already accepted stay up (as `asyncio.Server.close`)."""
        if self._serving:
            self._serving = False
            table = _listeners.get(self._loop, {})
            if table.get(self._key) is self:
                del table[self._key]

    async def wait_closed(self) -> None:
        return None


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory stream link.

    Bytes written here go into the peer's inbox and reach the peer's protocol
    on a later loop callback, all waiting bytes in one `data_received` (as TCP
    coalesces). While the peer has paused reading, its inbox is this end's
    write buffer, and crossing the high-water mark pauses this end's writer.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        sockname: tuple[str, int],
        peername: tuple[str, int],
    ) -> None:
        super().__init__(extra={"sockname": sockname, "peername": peername, "socket": None})
        self._loop = loop
        self._protocol: asyncio.BaseProtocol | None = None
        self._peer: MemoryTransport | None = None
        self._inbox = bytearray()
        self._inbox_eof = False  # the peer's end of file, delivered after the inbox
        self._inbox_reset = False  # the peer's reset, delivered after the inbox
        self._delivery_due = False
        self._reading = True
        self._closing = False
        self._lost = False
        self._eof_written = False
        self._writing_paused = False
        self._high, self._low = DEFAULT_LIMIT, DEFAULT_LIMIT // 4

    def link(self, peer: MemoryTransport) -> None:
        self._peer, peer._peer = peer, self

    # ------------------------------------------------------------ BaseTransport

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Graceful: the peer reads what was written, then its end of file."""
        if self._closing:
            return
        self._closing = True
        peer = self._peer
        if peer is not None and not peer._lost:
            peer._inbox_eof = True
            peer._schedule_delivery()
        self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        """A reset: this end drops what it has not read; the peer reads what had
        already reached it, then `ConnectionResetError`."""
        if self._lost:
            return
        self._closing = True
        self._inbox.clear()
        peer = self._peer
        if peer is not None and not peer._lost:
            peer._reset()
        self._loop.call_soon(self._connection_lost, None)

    # ------------------------------------------------------------ ReadTransport

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule_delivery()

    # ------------------------------------------------------------ WriteTransport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing:
            return
        peer = self._peer
        if peer is None or peer._lost or peer._closing:
            # the other end is gone: the next segment would be answered by a reset
            self._reset()
            return
        peer._inbox += data
        peer._schedule_delivery()
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()  # type: ignore[union-attr]

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_written or self._closing:
            return
        self._eof_written = True
        peer = self._peer
        if peer is not None and not peer._lost:
            peer._inbox_eof = True
            peer._schedule_delivery()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        peer = self._peer
        return len(peer._inbox) if peer is not None and not peer._lost else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = DEFAULT_LIMIT if high is None else high
        self._low = self._high // 4 if low is None else low

    # ------------------------------------------------------------ internals

    def _schedule_delivery(self) -> None:
        if not self._delivery_due:
            self._delivery_due = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery_due = False
        if self._lost or not self._reading or self._protocol is None:
            return
        protocol = self._protocol
        if self._inbox:
            data = bytes(self._inbox)
            self._inbox.clear()
            protocol.data_received(data)  # type: ignore[attr-defined]
            peer = self._peer
            if peer is not None:
                peer._maybe_resume_writing()
        if self._inbox_reset:
            self._connection_lost(
                ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            )
            return
        if self._inbox_eof and not self._inbox and not self._lost:
            self._inbox_eof = False
            keep_open = protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open:
                self.close()

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and self.get_write_buffer_size() <= self._low:
            self._writing_paused = False
            if not self._lost:
                self._protocol.resume_writing()  # type: ignore[union-attr]

    def _reset(self) -> None:
        """The other end reset the link: what is already here is read first (as on Linux),
        then the error. A paused reader meets the error at once: it is not reading."""
        if self._lost:
            return
        self._closing = True
        self._inbox_reset = True
        if not self._reading:
            self._inbox.clear()
            self._reading = True
        self._schedule_delivery()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        peer = self._peer
        if peer is not None:
            peer._maybe_resume_writing()
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
