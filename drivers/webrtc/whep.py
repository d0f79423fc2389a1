"""WHEP camera: pull a stream from a media server (MediaMTX, Janus, Cloudflare).

draft-ietf-wish-whep: a recvonly offer with every candidate gathered is POSTed
as `application/sdp`; the server answers `201` with a `Location` for the
session, which we DELETE on close. A supervisor task keeps one session up:
no frame for `watchdog_s` (aiortc itself would notice a dead peer only after
~30 s) marks the camera stale, tears the session down with DELETE and
reconnects with backoff. The frame stream stays open throughout; the
controller sees staleness as frame age.

The server is not trusted: its answer is read with a size cap (64 KiB, 4 KiB
kept of an error body), a garbled or undecodable answer is one failed
attempt like a refused connection (logged in one line, counted, retried
with capped backoff), and only a wrong token (401/403) or a redirect the
token may not follow ends the stream, as a `DriverConfigError`. The bearer
token goes only to the configured origin (scheme, host, port): a redirect
to another origin is refused when a token is configured (followed without
one), and a session `Location` on another origin is deleted without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar, Self
from urllib.parse import urljoin

import aiohttp

from drivers.base import ConfiguredDriver
from drivers.errors import ConnectionLost, DriverConfigError, ProtocolError
from drivers.lifecycle import Backoff, Reconnects, reconnect_with_backoff
from drivers.webrtc import ice
from drivers.webrtc.base import WebRtcCameraBase
from drivers.webrtc.http_limits import (
    MAX_ANSWER_BYTES,
    BodyTooLarge,
    error_excerpt,
    one_line,
    origin,
    read_capped,
    same_origin,
)
from drivers.webrtc.sdp import prefer_decodable
from drivers.webrtc.whep_config import WhepCameraConfig

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
HTTP_TIMEOUT_S = 5.0


class WhepCamera(WebRtcCameraBase, ConfiguredDriver):
    kind: ClassVar[str] = "camera"
    transport: ClassVar[str] = "whep"
    Config: ClassVar[type] = WhepCameraConfig
    spec_field: ClassVar[str | None] = "url"

    def __init__(self, config: WhepCameraConfig) -> None:
        self.config = config
        super().__init__(config.camera_name())
        self.watchdog_s = config.watchdog_s
        self.connects = 0
        self.reconnects = Reconnects()
        self.location: str | None = None
        self.fatal: BaseException | None = None
        self._pc: Any = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        if self.config.ice_addresses:
            ice.install(self.config.ice_addresses)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        self.spawn(self._supervise(), "supervisor")
        return self

    async def _release(self) -> None:
        try:
            await self._teardown()
        finally:
            if self._http is not None:
                await self._http.close()
                self._http = None
            if self.config.ice_addresses:
                ice.uninstall()

    def _headers(self, url: str, content_type: str | None = None) -> dict[str, str]:
        """Request headers for `url`: the token only if `url` is on the configured origin."""
        h = {"Accept": "application/sdp"}
        if content_type:
            h["Content-Type"] = content_type
        if self.config.token and same_origin(url, self.config.url):
            h["Authorization"] = f"Bearer {self.config.token}"
        return h

    # ------------------------------------------------------------ supervision

    @property
    def failures(self) -> int:
        """Failed attempts so far (any cause)."""
        return self.reconnects.failures

    @property
    def last_error(self) -> str | None:
        """The reason of the latest failed attempt, one line."""
        return self.reconnects.last_error

    async def _supervise(self) -> None:
        """Keep one session up; only a configuration error ends this loop.

        Anything else a server or a peer can cause (a garbled answer, a
        body that is not UTF-8, an aiortc assertion) is one failed attempt:
        one log line, counted, retried after a backoff capped at
        `backoff_max_s` (`reconnect_with_backoff`). A fatal error closes the
        mailbox with it, so `frames()` raises it to the controller.
        """
        try:
            await reconnect_with_backoff(
                self._session,
                what=f"camera {self.name}",
                backoff=Backoff(self.config.backoff_s, self.config.backoff_max_s),
                logger=log,
                fatal=(DriverConfigError,),
                describe=_reason,
                stats=self.reconnects,
            )
        except DriverConfigError as exc:
            log.error("camera %s: %s", self.name, exc)
            self.fatal = exc
            self.newest.close(exc)

    async def _session(self, link: Reconnects) -> None:
        """One session: connect (bounded up to its first frame), then watch it until it dies."""
        try:
            await asyncio.wait_for(self._connect(), self.config.connect_timeout_s)
            link.healthy()
            self.connects += 1
            self._set_stale(False, "connected")
            await self._watch()
        finally:
            self._set_stale(True, "session ended")
            try:
                await self._teardown()
            except Exception as exc:  # never let cleanup end the reconnect loop
                log.warning("camera %s: teardown failed: %s", self.name, _reason(exc))

    async def _watch(self) -> None:
        """Return when the session is dead: no frame for `watchdog_s`, or closed."""
        loop = asyncio.get_running_loop()
        period = min(self.watchdog_s / 4, 0.25)
        while True:
            await asyncio.sleep(period)
            age = self.frame_age(loop.time())
            if age is None or age > self.watchdog_s:
                raise ConnectionLost(f"no frame for {self.watchdog_s:.1f} s")
            pc = self._pc
            if pc is None or pc.connectionState in ("failed", "closed"):
                raise ConnectionLost(f"peer connection {pc.connectionState if pc else 'gone'}")

    # ------------------------------------------------------------ one session

    async def _connect(self) -> None:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = self._pc = RTCPeerConnection(ice.rtc_configuration(self.config.ice_servers))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_decodable(transceiver)
        got_track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and not got_track.done():
                got_track.set_result(track)

        await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate
        answer = await self._post(pc.localDescription.sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:  # aiortc reports bad SDP with many types, assertions included
            raise ProtocolError(
                f"WHEP answer from {self.config.url} is unusable: {_reason(exc)}"
            ) from None
        track = await got_track
        pump = self._start_pump(track, transceiver.receiver, self.config.sender_clock)
        await pump.first_frame.wait()  # bounded by connect_timeout_s

    async def _post(self, offer: str) -> str:
        """POST the offer, following redirects on the token's origin; the answer's text."""
        assert self._http is not None
        url = self.config.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._http.post(
                    url,
                    data=offer,
                    headers=self._headers(url, "application/sdp"),
                    allow_redirects=False,
                ) as resp:
                    if resp.status in (307, 308) and "Location" in resp.headers:
                        url = self._redirect(url, resp.headers["Location"])
                        continue
                    if resp.status != 201:
                        reason = await error_excerpt(resp)
                        if resp.status in (401, 403):
                            raise DriverConfigError(
                                f"WHEP {url}: {resp.status} (check the token option): {reason}"
                            )
                        raise ConnectionLost(f"WHEP POST {url}: {resp.status} {reason}")
                    if "Location" not in resp.headers:
                        raise ProtocolError(f"WHEP POST {url}: 201 without Location")
                    if resp.content_type != "application/sdp":
                        raise ProtocolError(
                            f"WHEP POST {url}: answer is {one_line(resp.content_type, 60)}"
                        )
                    try:
                        body = await read_capped(resp, MAX_ANSWER_BYTES)
                    except BodyTooLarge:
                        raise ProtocolError(
                            f"WHEP POST {url}: answer larger than {MAX_ANSWER_BYTES // 1024} KiB"
                        ) from None
                    try:
                        answer = body.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(f"WHEP POST {url}: answer is not UTF-8") from None
                    self.location = urljoin(str(resp.url), resp.headers["Location"])
                    return answer
            except aiohttp.ClientError as exc:
                raise ConnectionLost(f"WHEP POST {url}: {_reason(exc)}") from exc
        raise ProtocolError(f"WHEP POST {self.config.url}: more than {MAX_REDIRECTS} redirects")

    def _redirect(self, url: str, location: str) -> str:
        """Where a redirect leads; refused if the token would have to leave its origin."""
        target = urljoin(url, location)
        if origin(target) is None:
            raise ProtocolError(f"WHEP POST {url}: redirect to {one_line(target, 100)!r}")
        if self.config.token and not same_origin(target, self.config.url):
            raise DriverConfigError(
                f"WHEP {self.config.url} redirects to another origin ({one_line(target, 100)}); "
                "the token is sent only to the configured origin: configure that URL instead"
            )
        return target

    async def _teardown(self) -> None:
        """DELETE the session (best effort, bounded) and close the peer connection."""
        location, self.location = self.location, None
        pc, self._pc = self._pc, None
        try:
            if location and self._http is not None and origin(location) is not None:
                # the token goes along only if the Location is on the configured origin
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with self._http.delete(
                        location,
                        headers=self._headers(location),
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=2.0),
                    ) as resp:
                        resp.close()  # the body is of no interest, whatever its size
        finally:
            await self._stop_pump()
            if pc is not None:
                await pc.close()


def _reason(exc: BaseException) -> str:
    """One line naming what went wrong, for any exception (some have no message)."""
    text = one_line(str(exc))
    if isinstance(exc, (ConnectionLost, ProtocolError)) and text:
        return text
    if isinstance(exc, TimeoutError) and not text:
        return "connect timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
