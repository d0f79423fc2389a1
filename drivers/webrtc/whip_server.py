"""WHIP server (RFC 9725): browsers, phones and cameras push video to us.

One HTTP server per host:port, shared by every WHIP camera on it (refcounted:
the first camera starts it, the last one closes it). Each camera registers
its name; a publisher POSTs an SDP offer to `/whip/<name>` and gets the
answer with all our candidates (no trickle needed), a `Location` for the
session, which takes trickle-ICE `PATCH` and `DELETE`.

Every request is handled on its own: a malformed offer, a wrong content type
or an unknown session gets its HTTP status and a one-line reason, and no
other session notices.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import ipaddress
import logging
import secrets
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from drivers.errors import DriverConfigError
from drivers.webrtc import ice
from drivers.webrtc.sdp import SdpError, check_offer, ice_ufrag, parse_fragment, prefer_decodable

log = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
ANSWER_TIMEOUT_S = 10.0


class Endpoint(Protocol):
    """What a camera registers under its name."""

    def session_started(self, session: WhipSession, track: Any, receiver: Any) -> None: ...
    def session_ended(self, session: WhipSession) -> None: ...


@dataclass(eq=False)
class WhipSession:
    """One publisher's peer connection."""

    id: str
    name: str
    pc: Any
    remote_ufrag: str | None
    closed: bool = False
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Options that must agree between cameras sharing one server."""

    token: str | None
    ice_servers: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] = ()


class WhipServer:
    """The HTTP endpoint and its sessions; use `acquire`/`release` to share one."""

    def __init__(self, host: str, port: int, options: ServerOptions) -> None:
        self.host = host
        self.port = port
        self.options = options
        self.endpoints: dict[str, Endpoint] = {}
        self.sessions: dict[str, WhipSession] = {}
        self.users = 0
        self._runner: web.AppRunner | None = None
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    @property
    def bound_port(self) -> int:
        """The port actually bound (differs from `port` when 0 was asked)."""
        if self._runner is None:
            return self.port
        for site in self._runner.sites:
            server = getattr(site, "_server", None)
            if server is not None and server.sockets:
                return int(server.sockets[0].getsockname()[1])
        return self.port

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/publish", self._page)
        app.router.add_post("/whip/{name}", self._post)
        app.router.add_route("OPTIONS", "/whip/{name}", self._options)
        app.router.add_patch("/whip/{name}/{sid}", self._patch)
        app.router.add_delete("/whip/{name}/{sid}", self._delete)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise DriverConfigError(
                f"WHIP server cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        if self.options.ice_addresses:
            ice.install(self.options.ice_addresses)
        log.info("WHIP server listening on http://%s:%d/", self.host, self.bound_port)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(
            *(self.end_session(s) for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.options.ice_addresses:
            ice.uninstall()

    # ---------------------------------------------------------------- cameras

    def register(self, name: str, endpoint: Endpoint) -> None:
        if name in self.endpoints:
            raise DriverConfigError(
                f"WHIP path {name!r} on {self.host}:{self.port} is used by two cameras"
            )
        self.endpoints[name] = endpoint

    async def unregister(self, name: str) -> None:
        self.endpoints.pop(name, None)
        for s in [s for s in self.sessions.values() if s.name == name]:
            await self.end_session(s)

    async def end_session(self, session: WhipSession) -> None:
        """Close a session once; concurrent callers wait for the same close."""
        if session._closing is None:
            session._closing = asyncio.ensure_future(self._end(session))
        await asyncio.shield(session._closing)

    async def _end(self, session: WhipSession) -> None:
        session.closed = True
        self.sessions.pop(session.id, None)
        endpoint = self.endpoints.get(session.name)
        try:
            await session.pc.close()
        finally:
            if endpoint is not None:
                endpoint.session_ended(session)
            log.info("WHIP %s: session %s closed", session.name, session.id[:8])

    # ---------------------------------------------------------------- HTTP

    def _authorized(self, request: web.Request) -> bool:
        token = self.options.token
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)

    def _unauthorized(self) -> web.Response:
        return self._fail(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _fail(status: int, reason: str, **headers: str) -> web.Response:
        return web.Response(status=status, text=reason + "\n", headers=headers)

    def _check(self, request: web.Request, content_type: str) -> web.Response | None:
        if not self._authorized(request):
            return self._unauthorized()
        if request.match_info["name"] not in self.endpoints:
            return self._fail(404, f"no camera named {request.match_info['name']!r} here")
        if request.method in ("POST", "PATCH") and request.content_type != content_type:
            return self._fail(415, f"content type must be {content_type}", **{"Accept-Post": SDP})
        return None

    async def _page(self, request: web.Request) -> web.Response:
        page = importlib.resources.files("drivers.webrtc").joinpath("static/publish.html")
        return web.Response(text=page.read_text(encoding="utf-8"), content_type="text/html")

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": SDP, "Allow": "OPTIONS, POST"})

    async def _post(self, request: web.Request) -> web.Response:
        bad = self._check(request, SDP)
        if bad is not None:
            return bad
        name = request.match_info["name"]
        try:
            offer = await request.text()
            check_offer(offer)
        except (SdpError, UnicodeDecodeError) as exc:
            return self._fail(400, f"malformed SDP offer: {exc}")
        try:
            session, answer = await asyncio.wait_for(self._negotiate(name, offer), ANSWER_TIMEOUT_S)
        except SdpError as exc:
            return self._fail(400, f"cannot negotiate the offer: {exc}")
        except TimeoutError:
            return self._fail(503, "timed out gathering candidates")
        location = f"/whip/{name}/{session.id}"
        log.info("WHIP %s: session %s from %s", name, session.id[:8], request.remote)
        return web.Response(
            status=201,
            text=answer,
            content_type=SDP,
            headers={"Location": location, "ETag": f'"{session.id}"'},
        )

    async def _negotiate(self, name: str, offer: str) -> tuple[WhipSession, str]:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(ice.rtc_configuration(self.options.ice_servers))
        session = WhipSession(uuid.uuid4().hex, name, pc, ice_ufrag(offer))

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "video" or session.closed:
                return
            receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track),
                            None)
            endpoint = self.endpoints.get(name)
            if endpoint is not None:
                endpoint.session_started(session, track, receiver)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not session.closed:
                log.info("WHIP %s: connection %s", name, pc.connectionState)
                await self.end_session(session)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            for t in pc.getTransceivers():
                if t.kind == "video":
                    prefer_decodable(t)
                    t.direction = "recvonly"
                else:
                    t.direction = "inactive"  # we only take video; never let audio queue up
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            session.closed = True
            await pc.close()
            raise SdpError(str(exc) or type(exc).__name__) from None
        except BaseException:
            session.closed = True
            await pc.close()
            raise
        self.sessions[session.id] = session
        return session, pc.localDescription.sdp

    def _session(self, request: web.Request) -> WhipSession | None:
        s = self.sessions.get(request.match_info["sid"])
        if s is None or s.name != request.match_info["name"]:
            return None
        return s

    async def _patch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        session = self._session(request)
        if session is None:
            return self._fail(404, "unknown session")
        if request.content_type != SDPFRAG:
            return self._fail(415, f"content type must be {SDPFRAG}")
        try:
            frag = parse_fragment(await request.text())
        except (SdpError, UnicodeDecodeError) as exc:
            return self._fail(400, f"malformed SDP fragment: {exc}")
        if frag.ufrag is not None and frag.ufrag != session.remote_ufrag:
            return self._fail(422, "ICE restart is not supported; start a new session")
        from aiortc.sdp import candidate_from_sdp

        for mid, line in frag.candidates:
            try:
                cand = candidate_from_sdp(line.split(":", 1)[1])
            except (ValueError, IndexError) as exc:
                return self._fail(400, f"malformed candidate {line[:60]!r}: {exc}")
            cand.sdpMid = mid if mid is not None else _first_mid(session.pc)
            await session.pc.addIceCandidate(cand)
        return web.Response(status=204)

    async def _delete(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        session = self._session(request)
        if session is None:
            return self._fail(404, "unknown session")
        await self.end_session(session)
        return web.Response(status=200)


def _first_mid(pc: Any) -> str | None:
    for t in pc.getTransceivers():
        if t.mid is not None:
            return str(t.mid)
    return None


# -------------------------------------------------------------------- sharing

_servers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], WhipServer]]
_servers = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
_locks = weakref.WeakKeyDictionary()


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


def resolve_token(host: str, token: str | None, auth: bool | None) -> str | None:
    """A configured token is always checked; beyond loopback one is required
    (generated and logged if missing) unless `auth` is explicitly false."""
    if auth is None:
        auth = bool(token) or not is_loopback(host)
    if not auth:
        return None
    if token:
        return token
    token = secrets.token_urlsafe(18)
    log.warning(
        "WHIP server on %s needs a bearer token and none was configured; generated one: %s",
        host,
        token,
    )
    return token


async def acquire(
    host: str,
    port: int,
    *,
    token: str | None,
    auth: bool | None,
    ice_servers: Sequence[str] = (),
    ice_addresses: Sequence[str] = (),
) -> WhipServer:
    """The shared server for host:port, started if this is its first user."""
    async with _lock():
        servers = _servers.setdefault(asyncio.get_running_loop(), {})
        server = servers.get((host, port))
        if server is None:
            options = ServerOptions(
                resolve_token(host, token, auth), tuple(ice_servers), tuple(ice_addresses)
            )
            server = WhipServer(host, port, options)
            await server.start()
            servers[(host, port)] = server
        else:
            if token and server.options.token and token != server.options.token:
                raise DriverConfigError(
                    f"WHIP cameras sharing {host}:{port} must use the same token"
                )
            if tuple(ice_addresses) != server.options.ice_addresses or tuple(
                ice_servers
            ) != server.options.ice_servers:
                raise DriverConfigError(
                    f"WHIP cameras sharing {host}:{port} must use the same ICE options"
                )
        server.users += 1
        return server


async def release(server: WhipServer) -> None:
    """Drop one user; the last one closes the server."""
    async with _lock():
        server.users -= 1
        if server.users > 0:
            return
        servers = _servers.get(asyncio.get_running_loop(), {})
        if servers.get((server.host, server.port)) is server:
            del servers[(server.host, server.port)]
    await server.close()
