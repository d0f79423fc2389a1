"""WHIP camera: a publisher (browser, phone, camera) pushes video to us.

The camera registers its name on the shared WHIP server for its host:port
(`whip_server.acquire`). One publisher at a time: a new session replaces the
previous one, so a browser that reloads its page takes over at once. If no
frame arrives for `watchdog_s`, the camera is stale and the session is torn
down; the publisher must POST again (the publish page retries on its own).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Self

from drivers.base import ConfiguredDriver
from drivers.webrtc import whip_server
from drivers.webrtc.base import WebRtcCameraBase
from drivers.webrtc.whip_config import WhipCameraConfig
from drivers.webrtc.whip_server import WhipServer, WhipSession

log = logging.getLogger(__name__)


class WhipCamera(WebRtcCameraBase, ConfiguredDriver):
    kind: ClassVar[str] = "whip"
    Config: ClassVar[type] = WhipCameraConfig
    spec_field: ClassVar[str | None] = "address"

    def __init__(self, config: WhipCameraConfig) -> None:
        self.config = config
        self.host, self.port, name = config.parts()
        super().__init__(name)
        self.watchdog_s = config.watchdog_s
        self.server: WhipServer | None = None
        self.session: WhipSession | None = None
        self._session_started = 0.0
        self.sessions_started = 0

    @property
    def url(self) -> str:
        """The WHIP endpoint URL (with the port actually bound)."""
        port = self.server.bound_port if self.server else self.port
        return f"http://{self.host}:{port}/whip/{self.name}"

    async def __aenter__(self) -> Self:
        c = self.config
        self.server = await whip_server.acquire(
            self.host, self.port, token=c.token, auth=c.auth,
            ice_servers=c.ice_servers, ice_addresses=c.ice_addresses,
        )
        try:
            self.server.register(self.name, self)
        except BaseException:
            await whip_server.release(self.server)
            self.server = None
            raise
        self._spawn(self._watchdog(), "watchdog")
        log.info("camera %s: waiting for a publisher at %s", self.name, self.url)
        return self

    async def _release(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            try:
                await server.unregister(self.name)
            finally:
                await whip_server.release(server)
        await self._stop_pump()

    # ------------------------------------------------------- server callbacks

    def session_started(self, session: WhipSession, track: Any, receiver: Any) -> None:
        old, self.session = self.session, session
        if old is not None and old is not session and self.server is not None:
            log.info("camera %s: new publisher replaces session %s", self.name, old.id[:8])
            self._spawn(self.server.end_session(old), "replace")
        self._session_started = asyncio.get_running_loop().time()
        self.sessions_started += 1
        self._start_pump(track, receiver, self.config.sender_clock)

    def session_ended(self, session: WhipSession) -> None:
        if session is self.session:
            self.session = None
            if not self._closed:
                self._spawn(self._stop_pump(), "pump-stop")
            self._set_stale(True, "publisher gone")

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
            since = now - max(self._session_started, self.newest.last_arrival or 0.0)
            if since > self.watchdog_s:
                log.warning("camera %s: no frame for %.1f s, closing session %s",
                            self.name, since, session.id[:8])
                await self.server.end_session(session)
