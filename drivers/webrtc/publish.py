"""A minimal WHIP publisher on aiortc: pushes a track to a WHIP endpoint.

Used by the tests and the benchmark as the sending side, and handy for
demos: `python -m drivers.webrtc.publish http://127.0.0.1:8080/whip/front`
publishes a painted test pattern.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any
from urllib.parse import urljoin

import aiohttp

from drivers.errors import ConnectionLost, ProtocolError
from drivers.webrtc import ice
from drivers.webrtc.http_limits import (
    MAX_ANSWER_BYTES,
    BodyTooLarge,
    error_excerpt,
    read_capped,
    same_origin,
)

log = logging.getLogger(__name__)


class WhipPublisher:
    """One WHIP session: `async with WhipPublisher(url, track):` publishes until exit."""

    def __init__(
        self, url: str, track: Any, *, token: str | None = None, ice_servers: Sequence[str] = ()
    ) -> None:
        self.url = url
        self.track = track
        self.token = token
        self.ice_servers = tuple(ice_servers)
        self.location: str | None = None
        self.pc: Any = None

    def _headers(self, url: str, content_type: str | None = None) -> dict[str, str]:
        """Headers for `url`; the token only if `url` is on the endpoint's origin."""
        h = {}
        if content_type:
            h["Content-Type"] = content_type
        if self.token and same_origin(url, self.url):
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def __aenter__(self) -> WhipPublisher:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.pc = RTCPeerConnection(ice.rtc_configuration(self.ice_servers))
        self.pc.addTransceiver(self.track, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    self.url,
                    data=offer,
                    headers=self._headers(self.url, "application/sdp"),
                    allow_redirects=False,  # a redirect would carry the token along
                ) as resp,
            ):
                if resp.status != 201:
                    reason = await error_excerpt(resp)
                    raise ProtocolError(f"WHIP POST {self.url}: {resp.status} {reason}")
                try:
                    body = (await read_capped(resp, MAX_ANSWER_BYTES)).decode("utf-8")
                except (BodyTooLarge, UnicodeDecodeError) as exc:
                    raise ProtocolError(f"WHIP POST {self.url}: unusable answer: {exc}") from None
                self.location = urljoin(str(resp.url), resp.headers.get("Location", ""))
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        except aiohttp.ClientError as exc:
            await self.pc.close()
            raise ConnectionLost(f"WHIP POST {self.url}: {exc}") from exc
        except BaseException:
            await self.pc.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        pc, self.pc = self.pc, None
        if pc is None:
            return
        try:
            if self.location:
                async with (
                    aiohttp.ClientSession() as http,
                    http.delete(
                        self.location,
                        headers=self._headers(self.location),
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=3),
                    ) as resp,
                ):
                    resp.close()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        finally:
            await pc.close()


async def _main(args: argparse.Namespace) -> None:
    from drivers.webrtc.paint import PaintedTrack

    scope = ice.host_addresses(args.ice_address) if args.ice_address else nullcontext()
    with scope:
        async with WhipPublisher(args.url, PaintedTrack(args.fps), token=args.token):
            log.info("publishing to %s; Ctrl-C to stop", args.url)
            await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--token")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument(
        "--ice-address",
        action="append",
        default=[],
        help="gather host candidates only on this address (e.g. 127.0.0.1)",
    )
    logging.basicConfig(level=logging.INFO)
    try:
        asyncio.run(_main(p.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
