"""WHIP camera: a publisher (browser, phone, camera) pushes video to us.

The camera registers its name on the shared WHIP server for its host:port
(`whip_server.acquire`). One publisher at a time, and the one feeding the
controller keeps the camera: a new session is a *candidate* whose frames go
nowhere until its peer has connected (ICE and DTLS up) and a first frame was
decoded. Only then is it admitted, and only if no other publisher is live or
its POST was authorised to take over (`allow_takeover` and the token). A
publisher that merely POSTs an offer, or connects and sends nothing, never
displaces the live one. A live publisher that goes stale (no frame for
`watchdog_s`, or its peer failed or closed) stops counting as live, and its
session is torn down; the publisher must POST again (the publish page
retries on its own).
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar, Self

from drivers.av_frames import Arrived, last_arrival
from drivers.base import ConfiguredDriver
from drivers.newest import LatestValue
from drivers.webrtc import whip_server
from drivers.webrtc.base import WebRtcCameraBase, receive
from drivers.webrtc.pump import TrackPump
from drivers.webrtc.whip_config import WhipCameraConfig
from drivers.webrtc.whip_server import WhipServer, WhipSession

log = logging.getLogger(__name__)


class WhipCamera(WebRtcCameraBase, ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    transport: ClassVar[str] = "whip"
    Config: ClassVar[type] = WhipCameraConfig
    spec_field: ClassVar[str | None] = "address"

    def __init__(self, config: WhipCameraConfig) -> None:
        self.config = config
        self.host, self.port, name = config.parts()
        super().__init__(name)
        self.watchdog_s = config.watchdog_s
        self.allow_takeover = config.allow_takeover
        self.connect_timeout_s = config.connect_timeout_s
        self.server: WhipServer | None = None
        self.session: WhipSession | None = None
        self._session_started = 0.0
        self.sessions_started = 0
        #: sessions offered but not admitted yet, each with its own pump and mailbox
        self._candidates: dict[WhipSession, TrackPump] = {}
        #: candidates that connected but were refused because another publisher was live
        self.refused_candidates = 0

    @property
    def url(self) -> str:
        """The WHIP endpoint URL (with the port actually bound)."""
        port = self.server.bound_port if self.server else self.port
        return f"http://{self.host}:{port}/whip/{self.name}"

    async def __aenter__(self) -> Self:
        c = self.config
        self.server = await whip_server.acquire(
            self.host,
            self.port,
            token=c.token,
            auth=c.auth,
            token_file=c.token_file,
            allowed_hosts=c.allowed_hosts,
            ice_servers=c.ice_servers,
            ice_addresses=c.ice_addresses,
        )
        try:
            self.server.register(self.name, self)
        except BaseException:
            await whip_server.release(self.server)
            self.server = None
            raise
        self.spawn(self._watchdog(), "watchdog")
        log.info("camera %s: waiting for a publisher at %s", self.name, self.url)
        return self

    async def _release(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            try:
                await server.unregister(self.name)
            finally:
                await whip_server.release(server)
        candidates, self._candidates = list(self._candidates.values()), {}
        await asyncio.gather(*(p.close() for p in candidates), return_exceptions=True)
        await self._stop_pump()

    # ------------------------------------------------------- server callbacks

    def live_session(self) -> WhipSession | None:
        """The session feeding us, if it is live: not closed, peer not failed, frames fresh.

        A stale session does not block a new publisher (the watchdog is about
        to close it anyway).
        """
        s = self.session
        if s is None or s.closed or s.pc is None:
            return None
        if s.pc.connectionState in ("failed", "closed"):
            return None
        age = self.frame_age(asyncio.get_running_loop().time())
        if age is None or age > self.watchdog_s:
            return None
        return s

    def session_offered(self, session: WhipSession) -> None:
        """Receive the candidate's frames into its own mailbox until it is admitted."""
        box: LatestValue[Arrived] = LatestValue(self.name)
        pump = receive(session.track, session.receiver, box, self.config.sender_clock)
        self._candidates[session] = pump
        self.spawn(self._admit(session, pump), f"admit-{session.id[:8]}")

    def session_ended(self, session: WhipSession) -> None:
        pump = self._candidates.pop(session, None)
        if pump is not None and not self._closed:
            self.spawn(pump.close(), "candidate-close")
        if session is self.session:
            self.session = None
            if not self._closed:
                self.spawn(self._stop_pump(), "pump-stop")
            self._set_stale(True, "publisher gone")

    async def _admit(self, session: WhipSession, pump: TrackPump) -> None:
        """Admit `session` once its peer connected and a frame was decoded.

        No timeout here: the server closes a session that stays pending past
        `connect_timeout_s`, which ends the pump and so this wait.
        """
        first = asyncio.ensure_future(pump.first_frame.wait())
        ended = asyncio.ensure_future(pump.ended.wait())
        try:
            await asyncio.wait((first, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
            ended.cancel()
        if session.closed or not pump.first_frame.is_set() or self.server is None:
            return
        if session.pc.connectionState != "connected":
            return  # a frame implies DTLS is up; anything else is not a connected peer
        live = self.live_session()
        if live is not None and not session.takeover:
            # another publisher became live while this one was connecting
            self.refused_candidates += 1
            log.warning(
                "camera %s: session %s connected but session %s is live; closing the new one",
                self.name,
                session.id[:8],
                live.id[:8],
            )
            await self.server.end_session(session)
            return
        self._promote(session, pump)

    def _promote(self, session: WhipSession, pump: TrackPump) -> None:
        """Make `session` the camera's source; only now does the old one go."""
        self._candidates.pop(session, None)
        session.live = True
        old, self.session = self.session, session
        old_pump, self._pump = self._pump, pump
        first = pump.sink.peek()
        pump.sink = self.newest
        if first is not None and not self.newest.closed:
            self.newest.publish(first.value, first.source_time, now=first.publish_time)
        self._session_started = asyncio.get_running_loop().time()
        self.sessions_started += 1
        log.info(
            "camera %s: publisher %s connected (session %s)",
            self.name,
            session.client,
            session.id[:8],
        )
        if old_pump is not None:
            self.spawn(old_pump.close(), "pump-close")
        if old is not None and not old.closed and self.server is not None:
            log.info(
                "camera %s: session %s replaces session %s", self.name, session.id[:8], old.id[:8]
            )
            self.spawn(self.server.end_session(old), "replace")

    # ------------------------------------------------------- liveness

    async def _watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(self.watchdog_s / 4, 0.25)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            age = self.frame_age(now)
            if age is not None and age <= self.watchdog_s:
                self._set_stale(False, "frames arriving")
                continue
            self._set_stale(True, f"no frame for {self.watchdog_s:.1f} s")
            session = self.session
            if session is None or self.server is None:
                continue
            since = now - max(self._session_started, last_arrival(self.newest) or 0.0)
            if since > self.watchdog_s:
                log.warning(
                    "camera %s: no frame for %.1f s, closing session %s",
                    self.name,
                    since,
                    session.id[:8],
                )
                await self.server.end_session(session)
