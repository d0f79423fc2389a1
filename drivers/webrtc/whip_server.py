"""WHIP server (RFC 9725): browsers, phones and cameras push video to us.

One HTTP server per host:port, shared by every WHIP camera on it (refcounted:
the first camera starts it, the last one closes it). Each camera registers
its name; a publisher POSTs an SDP offer to `/whip/<name>` and gets the
answer with all our candidates (no trickle needed), a `Location` for the
session, which takes trickle-ICE `PATCH` and `DELETE`.

A session starts *pending*: it holds a peer connection (UDP sockets, a DTLS
certificate) but feeds nothing. The camera admits it once its peer has
connected and a first frame was decoded; a session that does not get there
within the camera's `connect_timeout_s` is closed and its sockets released.
A camera with a live publisher answers a second one `409 Conflict` unless
that camera allows takeover and the request carried the token; even then the
old session keeps feeding until the new one is admitted.

Before any of that, every request passes the guards (`whip_guard`): Host and
Origin must name this server (403), session-creating POSTs are rate-limited
per client address (429), pending sessions are capped per camera and per
server (503 with Retry-After) and bodies are capped (413). Every request is
handled on its own: a bad one gets its status and a one-line reason, and no
other session notices.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.resources
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

from aiohttp import web

from drivers.errors import DriverConfigError
from drivers.lifecycle import Lifecycle
from drivers.webrtc import ice
from drivers.webrtc.sdp import SdpError, check_offer, ice_ufrag, parse_fragment, prefer_decodable
from drivers.webrtc.whip_guard import (
    HostPolicy,
    RateLimiter,
    bearer_matches,
    check_token_text,
    fingerprint,
    is_loopback,
    load_or_create_token,
    retry_after,
)

__all__ = [
    "Endpoint",
    "Limits",
    "ServerOptions",
    "WhipServer",
    "WhipSession",
    "acquire",
    "is_loopback",
    "release",
    "resolve_token",
]

log = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
ANSWER_TIMEOUT_S = 10.0
#: At most one log line per this many seconds about refused requests (a flood
#: must not turn into a flood of log lines written on the event loop).
REFUSAL_LOG_PERIOD_S = 5.0


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one server takes on before it says no.

    A publisher needs one pending session, a page reload or an authorised
    takeover a second; a server carries a handful of cameras. A legitimate
    publisher retries every couple of seconds, well under `post_per_s`.
    """

    max_body: int = 64 * 1024
    pending_per_camera: int = 2
    pending_total: int = 8
    post_burst: int = 10
    post_per_s: float = 1.0
    busy_retry_s: float = 2.0


#: The limits new servers get (tests replace it to probe one limit at a time).
LIMITS = Limits()


class Endpoint(Protocol):
    """What a camera registers under its name."""

    allow_takeover: bool
    connect_timeout_s: float

    def live_session(self) -> WhipSession | None:
        """The session feeding the camera if it is live (connected, frames fresh), else None."""
        ...

    def session_offered(self, session: WhipSession) -> None:
        """A new pending session with a video track; the camera decides when to admit it."""
        ...

    def session_ended(self, session: WhipSession) -> None: ...


@dataclass(eq=False)
class WhipSession:
    """One publisher's peer connection.

    `live` is set by the camera when it admits the session (peer connected,
    first frame decoded); until then the session is pending. `takeover`
    records that the POST was authorised to replace a live publisher.
    """

    id: str
    name: str
    pc: Any = None
    remote_ufrag: str | None = None
    client: str | None = None
    takeover: bool = False
    live: bool = False
    closed: bool = False
    track: Any = None
    receiver: Any = None
    _closing: asyncio.Task[None] | None = field(default=None, repr=False)
    _expiry: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pending(self) -> bool:
        return not self.live and not self.closed


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Options that must agree between cameras sharing one server (`token` is resolved)."""

    token: str | None
    ice_servers: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()


class WhipServer(Lifecycle):
    """The HTTP endpoint and its sessions; use `acquire`/`release` to share one.

    Its background tasks (session expiries) are owned through `Lifecycle`, so
    `close()` ends them, bounded, before the sessions and the socket go.
    """

    name = "whip"

    def __init__(
        self, host: str, port: int, options: ServerOptions, limits: Limits | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.options = options
        self.limits = limits or LIMITS
        self.hosts = HostPolicy(host, lambda: self.bound_port, options.allowed_hosts)
        self.endpoints: dict[str, Endpoint] = {}
        self.sessions: dict[str, WhipSession] = {}
        self.users = 0
        #: what the first camera asked for; later cameras must ask the same
        self.requested: tuple[Any, ...] = ()
        #: refused requests by status, for tests and the operator
        self.refused: collections.Counter[int] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._rate: RateLimiter | None = None
        self._refusal_log_at = -REFUSAL_LOG_PERIOD_S
        self._refusals_unlogged = 0

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

    def pending_count(self, name: str | None = None) -> int:
        return sum(
            1 for s in self.sessions.values() if s.pending and (name is None or s.name == name)
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The first peer connection imports aiortc's codecs and initialises
        # OpenSSL: ~130 ms that would otherwise stall the loop on the first
        # offer, possibly mid-run. Pay it here, off the loop, while connecting.
        await asyncio.to_thread(_preload_aiortc)
        self._rate = RateLimiter(self.limits.post_burst, self.limits.post_per_s, loop.time)
        app = web.Application(client_max_size=self.limits.max_body, middlewares=[self._guard])
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
        log.info(
            "WHIP server listening on http://%s:%d/ (%s)",
            self.host,
            self.bound_port,
            f"bearer token {fingerprint(self.options.token)}"
            if self.options.token
            else "no token: loopback only",
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def _release(self) -> None:
        """After the owned tasks ended: every session, then the socket."""
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
        expiry, session._expiry = session._expiry, None
        if expiry is not None and expiry is not asyncio.current_task():
            expiry.cancel()
        endpoint = self.endpoints.get(session.name)
        try:
            if session.pc is not None:
                await session.pc.close()
        finally:
            if endpoint is not None and session.track is not None:
                endpoint.session_ended(session)
            log.info("WHIP %s: session %s closed", session.name, session.id[:8])

    async def _expire(self, session: WhipSession, after_s: float) -> None:
        """Close a session its camera has not admitted within `after_s` (sockets freed)."""
        await asyncio.sleep(after_s)
        if session.pending:
            log.info(
                "WHIP %s: session %s from %s did not connect within %.1f s; closing it",
                session.name,
                session.id[:8],
                session.client,
                after_s,
            )
            await self.end_session(session)

    # ---------------------------------------------------------------- HTTP

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """DNS-rebinding defence on every route: Host and Origin must name this server."""
        reason = self.hosts.check(request.headers.get("Host"), request.headers.get("Origin"))
        if reason is not None:
            return self._refuse(request, 403, reason)
        return await handler(request)

    def _refuse(
        self, request: web.Request, status: int, reason: str, **headers: str
    ) -> web.Response:
        """Answer a refusal; log it, but at most one line per `REFUSAL_LOG_PERIOD_S`."""
        self.refused[status] += 1
        self._refusals_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_log_at >= REFUSAL_LOG_PERIOD_S:
            log.warning(
                "WHIP %s:%d: refused %d request(s) since the last report; latest: %s %s from %s: "
                "%d %s",
                self.host,
                self.bound_port,
                self._refusals_unlogged,
                request.method,
                request.path[:80],
                request.remote,
                status,
                reason,
            )
            self._refusal_log_at = now
            self._refusals_unlogged = 0
        return self._fail(status, reason, **headers)

    def _authorized(self, request: web.Request) -> bool:
        token = self.options.token
        return token is None or bearer_matches(request.headers.get("Authorization"), token)

    def _unauthorized(self, request: web.Request) -> web.Response:
        return self._refuse(
            request, 401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"}
        )

    @staticmethod
    def _fail(status: int, reason: str, **headers: str) -> web.Response:
        return web.Response(status=status, text=reason + "\n", headers=headers)

    def _check(self, request: web.Request, content_type: str) -> web.Response | None:
        if not self._authorized(request):
            return self._unauthorized(request)
        if request.match_info["name"] not in self.endpoints:
            return self._fail(404, f"no camera named {request.match_info['name']!r} here")
        if request.method in ("POST", "PATCH") and request.content_type != content_type:
            return self._fail(415, f"content type must be {content_type}", **{"Accept-Post": SDP})
        return None

    async def _read_text(self, request: web.Request, what: str) -> str | web.Response:
        """The body as text, read in chunks and refused (413) beyond `limits.max_body`.

        A declared length beyond the cap is refused before anything is read.
        """
        cap = self.limits.max_body
        too_big = f"{what} larger than {cap // 1024} KiB"
        if request.content_length is not None and request.content_length > cap:
            return self._refuse(request, 413, too_big)
        buf = bytearray()
        while True:
            chunk = await request.content.read(cap + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
            if len(buf) > cap:
                return self._refuse(request, 413, too_big)
        try:
            return buf.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(400, f"malformed {what}: not UTF-8 text")

    async def _page(self, request: web.Request) -> web.Response:
        page = importlib.resources.files("drivers.webrtc").joinpath("static/publish.html")
        text = await asyncio.to_thread(page.read_text, encoding="utf-8")
        return web.Response(text=text, content_type="text/html")

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Accept-Post": SDP, "Allow": "OPTIONS, POST"})

    async def _post(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        assert self._rate is not None
        wait = self._rate.take(request.remote or "")
        if wait > 0:
            return self._refuse(
                request,
                429,
                "too many offers from this address; retry later",
                **{"Retry-After": retry_after(wait)},
            )
        bad = self._check(request, SDP)
        if bad is not None:
            return bad
        offer = await self._read_text(request, "SDP offer")
        if isinstance(offer, web.Response):
            return offer
        try:
            check_offer(offer)
        except SdpError as exc:
            return self._fail(400, f"malformed SDP offer: {exc}")
        endpoint = self.endpoints[name]
        live = endpoint.live_session()
        if live is not None and not (endpoint.allow_takeover and self.options.token is not None):
            return self._refuse(
                request,
                409,
                f"camera {name!r} already has a live publisher (session {live.id[:8]}); "
                "it must stop or DELETE its session first",
            )
        if (
            self.pending_count(name) >= self.limits.pending_per_camera
            or self.pending_count() >= self.limits.pending_total
        ):
            return self._refuse(
                request,
                503,
                f"too many sessions waiting to connect to camera {name!r}; retry later",
                **{"Retry-After": retry_after(self.limits.busy_retry_s)},
            )
        # registered before the first await, so that concurrent offers count it
        session = WhipSession(
            uuid.uuid4().hex,
            name,
            remote_ufrag=ice_ufrag(offer),
            client=request.remote,
            takeover=live is not None,
        )
        self.sessions[session.id] = session
        try:
            answer = await asyncio.wait_for(self._negotiate(session, offer), ANSWER_TIMEOUT_S)
        except SdpError as exc:
            await self.end_session(session)
            return self._fail(400, f"cannot negotiate the offer: {exc}")
        except TimeoutError:
            await self.end_session(session)
            return self._fail(503, "timed out gathering candidates")
        except BaseException:
            await self.end_session(session)
            raise
        endpoint_now = self.endpoints.get(name)
        if session.closed or endpoint_now is None or self.closed:
            await self.end_session(session)
            return self._fail(503, f"camera {name!r} went away during negotiation; retry later")
        session._expiry = self.spawn(
            self._expire(session, endpoint_now.connect_timeout_s), f"expire-{session.id[:8]}"
        )
        endpoint_now.session_offered(session)
        log.info(
            "WHIP %s: session %s from %s%s, waiting for it to connect",
            name,
            session.id[:8],
            request.remote,
            " (takeover)" if session.takeover else "",
        )
        return web.Response(
            status=201,
            text=answer,
            content_type=SDP,
            headers={"Location": f"/whip/{name}/{session.id}", "ETag": f'"{session.id}"'},
        )

    async def _negotiate(self, session: WhipSession, offer: str) -> str:
        """Set up the peer connection: answer with every candidate, receive video only."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = session.pc = RTCPeerConnection(ice.rtc_configuration(self.options.ice_servers))

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "video" or session.track is not None:
                return
            session.track = track
            session.receiver = next(
                (t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None
            )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed") and not session.closed:
                log.info("WHIP %s: connection %s", session.name, pc.connectionState)
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
        except Exception as exc:  # aiortc reports bad SDP with many types, assertions included
            raise SdpError(f"{type(exc).__name__}: {exc}"[:200]) from None
        if session.track is None:
            raise SdpError("the offer sends no video (its video section must be sendonly)")
        return str(pc.localDescription.sdp)

    def _session(self, request: web.Request) -> WhipSession | None:
        s = self.sessions.get(request.match_info["sid"])
        if s is None or s.name != request.match_info["name"]:
            return None
        return s

    async def _patch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        session = self._session(request)
        if session is None:
            return self._fail(404, "unknown session")
        if request.content_type != SDPFRAG:
            return self._fail(415, f"content type must be {SDPFRAG}")
        text = await self._read_text(request, "SDP fragment")
        if isinstance(text, web.Response):
            return text
        try:
            frag = parse_fragment(text)
        except SdpError as exc:
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
            return self._unauthorized(request)
        session = self._session(request)
        if session is None:
            return self._fail(404, "unknown session")
        await self.end_session(session)
        return web.Response(status=200)


def _preload_aiortc() -> None:
    """Import what negotiation needs and make one DTLS certificate (warms OpenSSL up)."""
    from aiortc import RTCPeerConnection  # noqa: F401
    from aiortc.codecs import h264, vpx  # noqa: F401
    from aiortc.rtcdtlstransport import RTCCertificate

    RTCCertificate.generateCertificate()


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


def resolve_token(
    host: str, token: str | None, auth: bool | None, token_file: str | None = None
) -> str | None:
    """The token the server checks, or None for none.

    A configured `token` is always checked; beyond loopback one is required
    unless `auth` is explicitly false. The server never makes one up and logs
    it: with `token_file`, the token is read from that file, or generated
    into it (mode 0600) on first use, and only its fingerprint is logged.
    Does blocking file I/O: call it off the event loop.
    """
    if auth is None:
        auth = bool(token or token_file) or not is_loopback(host)
    if not auth:
        return None
    if token:
        return check_token_text(token, "the token option")
    if token_file:
        path = Path(token_file).expanduser()
        value, created = load_or_create_token(path)
        if created:
            log.warning(
                "WHIP server on %s: generated a bearer token into %s (fingerprint %s); "
                "give it to the publishers",
                host,
                path,
                fingerprint(value),
            )
        return value
    raise DriverConfigError(
        f"WHIP server on {host} accepts publishers beyond loopback and needs a bearer token: "
        "set the token option, or token_file=PATH to have one generated into a file only you "
        "can read (auth=false turns this off, on a network you trust)"
    )


async def acquire(
    host: str,
    port: int,
    *,
    token: str | None,
    auth: bool | None,
    token_file: str | None = None,
    allowed_hosts: Sequence[str] = (),
    ice_servers: Sequence[str] = (),
    ice_addresses: Sequence[str] = (),
) -> WhipServer:
    """The shared server for host:port, started if this is its first user."""
    access = (token, token_file, auth, tuple(allowed_hosts))
    ice_opts = (tuple(ice_servers), tuple(ice_addresses))
    async with _lock():
        servers = _servers.setdefault(asyncio.get_running_loop(), {})
        server = servers.get((host, port))
        if server is None:
            resolved = await asyncio.to_thread(resolve_token, host, token, auth, token_file)
            options = ServerOptions(resolved, *ice_opts, allowed_hosts=tuple(allowed_hosts))
            server = WhipServer(host, port, options)
            server.requested = (*access, *ice_opts)
            await server.start()
            servers[(host, port)] = server
        elif server.requested[:4] != access:
            raise DriverConfigError(
                f"WHIP cameras sharing {host}:{port} must use the same token, token_file, "
                "auth and allowed_hosts options"
            )
        elif server.requested[4:] != ice_opts:
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
