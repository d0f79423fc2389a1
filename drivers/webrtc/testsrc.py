"""Synthetic WHIP clients: a test-pattern publisher, a local intruder, an offer flood.

They play the other side of the WHIP camera for the tests and for the fault
matrix (`controller.fault_matrix_webrtc`), which must not import tests. Each
runs in-process (the coroutines) or as a process of its own, so that its
aiortc work is not charged to the process under test and so that it can be
SIGKILLed like a crashing camera:

    python -m drivers.webrtc.testsrc publish URL [--fps 15] [--size 320x240]
    python -m drivers.webrtc.testsrc intrude URL --attempt 'Host=evil.example:8080' ...
    python -m drivers.webrtc.testsrc flood URL --offers 100 [--over 2]

`publish` sends the painted moving pattern of `drivers.webrtc.paint` (its
frames carry the sender's monotonic time) and, like the browser publish page,
keeps trying: a refused POST (409 while another publisher is live, 429, 503)
is retried every `--retry-s`, and a session that ends is published again.
`intrude` POSTs offers of a live peer with the headers an attacker chooses;
an offer that is accepted is connected and sends video for `--hold` s, so a
server that lets it in really does get the intruder's pictures. Every
process prints one JSON object per line (events with `time.monotonic()`,
the asyncio loop's clock on the same host).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from drivers.errors import ConnectionLost, ProtocolError
from drivers.webrtc import ice
from drivers.webrtc.http_limits import MAX_ANSWER_BYTES, error_excerpt, read_capped

log = logging.getLogger(__name__)

#: The smallest frame `paint.read_luma` can read back, at a rate that keeps
#: a 2-core machine's VP8 encoder and decoder cheap.
PATTERN_SIZE = (320, 240)
PATTERN_FPS = 15.0
SDP = "application/sdp"


def _event(kind: str, **fields: Any) -> None:
    """One JSON line on stdout, stamped with the host's monotonic clock."""
    print(json.dumps({"event": kind, "t": time.monotonic(), **fields}), flush=True)


def painted_track(fps: float = PATTERN_FPS, size: tuple[int, int] = PATTERN_SIZE) -> Any:
    from drivers.webrtc.paint import PaintedTrack

    return PaintedTrack(fps, *size)


async def make_offer(direction: str = "sendonly") -> str:
    """A complete, valid video offer (the peer is closed afterwards, so it never connects).

    `sendonly` is what a publisher sends; `sendrecv` and `recvonly` offers are
    accepted by the server's SDP checks too and must not leak either.
    """
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(ice.rtc_configuration())
    if direction == "recvonly":
        pc.addTransceiver("video", direction="recvonly")
    else:
        pc.addTransceiver(painted_track(), direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


async def flood(
    url: str,
    offers: int,
    headers: Mapping[str, str] | None = None,
    direction: str = "sendonly",
    over_s: float = 0.0,
) -> dict[str, int]:
    """POST the same offer `offers` times (spread evenly over `over_s` s, or back to back).

    Returns a histogram of the statuses (or exception names).
    """
    import aiohttp

    offer = await make_offer(direction)
    statuses: collections.Counter[str] = collections.Counter()
    h = {"Content-Type": SDP, **(headers or {})}
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession() as http:
        for k in range(offers):
            if over_s > 0:
                await asyncio.sleep(max(0.0, start + k * over_s / offers - loop.time()))
            try:
                async with http.post(url, data=offer, headers=h) as resp:
                    await resp.read()
                    statuses[str(resp.status)] += 1
            except aiohttp.ClientError as exc:
                statuses[type(exc).__name__] += 1
    return dict(statuses)


async def intrude(url: str, headers: Mapping[str, str], hold_s: float = 3.0) -> tuple[int, str]:
    """POST a live peer's offer with `headers`; (status, reason or answer excerpt).

    On 201 the peer is connected and publishes the pattern for `hold_s` s:
    an intruder that is let in gets to send its video, as a real one would.
    """
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(ice.rtc_configuration())
    try:
        pc.addTransceiver(painted_track(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url,
                data=pc.localDescription.sdp,
                headers={"Content-Type": SDP, **headers},
                allow_redirects=False,
            ) as resp,
        ):
            status = resp.status
            if status == 201:
                text = (await read_capped(resp, MAX_ANSWER_BYTES)).decode("utf-8", "replace")
            else:
                text = await error_excerpt(resp)
        if status == 201:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
            await asyncio.sleep(hold_s)
        return status, text[:200]
    finally:
        await pc.close()


async def publish(
    url: str,
    *,
    fps: float = PATTERN_FPS,
    size: tuple[int, int] = PATTERN_SIZE,
    token: str | None = None,
    retry_s: float = 0.5,
) -> None:
    """Publish the pattern until cancelled; retry refused POSTs, republish ended sessions."""
    from drivers.webrtc.publish import WhipPublisher

    while True:
        try:
            async with WhipPublisher(url, painted_track(fps, size), token=token) as pub:
                _event("publishing", location=pub.location)
                await _ended(pub.pc)
                _event("session_ended")
        except (ProtocolError, ConnectionLost) as exc:
            _event("refused", reason=str(exc)[:200])
        await asyncio.sleep(retry_s)


async def _ended(pc: Any) -> None:
    """Return when `pc` failed or closed (the server ended the session, or the peer died)."""
    ended = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            ended.set()

    on_state()
    await ended.wait()


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 320 or int(h) < 32:
        raise argparse.ArgumentTypeError(
            f"size must be WxH with W >= 320 and H >= 32, got {text!r}"
        )
    return int(w), int(h)


def _headers(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"headers must be Name=value[,Name=value], got {text!r}"
            )
        out[name.strip()] = value.strip()
    return out


async def _main(args: argparse.Namespace) -> None:
    with ice.host_addresses(args.ice_address or ["127.0.0.1"]):
        if args.command == "publish":
            await publish(
                args.url, fps=args.fps, size=args.size, token=args.token, retry_s=args.retry_s
            )
        elif args.command == "intrude":
            for headers in args.attempt or [{}]:
                status, text = await intrude(args.url, headers, args.hold)
                _event("answer", headers=headers, status=status, text=text)
        else:
            statuses = await flood(
                args.url, args.offers, direction=args.direction, over_s=args.over
            )
            print(json.dumps(statuses), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m drivers.webrtc.testsrc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="publish the moving test pattern, retrying")
    pub.add_argument("--fps", type=float, default=PATTERN_FPS)
    pub.add_argument("--size", type=_size, default=PATTERN_SIZE, metavar="WxH")
    pub.add_argument("--token")
    pub.add_argument("--retry-s", type=float, default=0.5)
    intr = sub.add_parser("intrude", help="POST live offers with chosen headers")
    intr.add_argument(
        "--attempt",
        type=_headers,
        action="append",
        metavar="Name=value[,Name=value]",
        help="one POST with these headers (repeatable; empty: the client's own)",
    )
    intr.add_argument("--hold", type=float, default=3.0, help="seconds an accepted peer publishes")
    fl = sub.add_parser("flood", help="POST one offer many times; print the statuses")
    fl.add_argument("--offers", type=int, default=100)
    fl.add_argument("--over", type=float, default=0.0, help="spread them over this many seconds")
    fl.add_argument("--direction", choices=("sendonly", "sendrecv", "recvonly"), default="sendonly")
    for sp in (pub, intr, fl):
        sp.add_argument("url")
        sp.add_argument(
            "--ice-address",
            action="append",
            default=[],
            help="gather host candidates only on this address (default 127.0.0.1)",
        )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
