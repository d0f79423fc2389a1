"""RTP time -> capture time in the controller clock, via RTCP sender reports.

A decoded frame's `pts` counts RTP ticks from the first frame aiortc saw: it
is no clock. Each RTCP sender report pairs the sender's NTP wall time with an
RTP timestamp, which places every frame on the sender's wall clock. From
there, `sender_clock`:

- "synced": the sender's wall clock agrees with ours (same host, or both
  NTP-disciplined): capture = sender time - (our wall clock - our monotonic
  clock). Capture times later than arrival (small skew) are clamped to it.
- "relative": no agreement assumed; the smallest transit seen so far (arrival
  minus sender time) is taken as the offset, which removes jitter and the
  decoder queue but not the base network delay.
- "auto" (default): "synced" if the first mapped frame's transit is plausible
  (0..2 s), else "relative".

Until the first report (~1 s) the arrival time is used, with
`time_source="arrival"`.

aiortc has no public API for sender reports nor for the RTP origin of `pts`,
so this reads `RTCRtpReceiver` internals; aiortc's minor version is pinned
in pyproject and `check_internals()` (run by a test) fails loudly if they move.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from drivers.base import TimeSource
from drivers.errors import DriverError

log = logging.getLogger(__name__)

SenderClock = Literal["auto", "synced", "relative"]

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_MAPPER = "_RTCRtpReceiver__timestamp_mapper"
_RTX = "_RTCRtpReceiver__rtx_ssrc"


class InternalsChanged(DriverError):
    """aiortc's receiver no longer has the private attributes this module reads."""


def check_internals(receiver: Any) -> None:
    """Raise `InternalsChanged` unless `receiver` has what `RtcpClock` reads."""
    missing = []
    mapper = getattr(receiver, _MAPPER, None)
    if mapper is None or not hasattr(mapper, "_origin"):
        missing.append(f"{_MAPPER}._origin")
    if not isinstance(getattr(receiver, _RTX, None), dict):
        missing.append(_RTX)
    if not asyncio.iscoroutinefunction(getattr(receiver, "_handle_rtcp_packet", None)):
        missing.append("_handle_rtcp_packet")
    if missing:
        raise InternalsChanged(
            "aiortc's RTCRtpReceiver internals changed (missing: "
            + ", ".join(missing)
            + "); update drivers/webrtc/rtcp_clock.py and the aiortc pin"
        )


def ntp_to_unix(ntp: int) -> float:
    return (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / 2**32


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    sender_unix: float
    rtp: int
    received: float  # controller clock


class RtcpClock:
    """Stamps frames of one receiver with capture times (see module docstring)."""

    def __init__(
        self,
        receiver: Any,
        *,
        clock_rate: int = 90_000,
        sender_clock: SenderClock = "auto",
    ) -> None:
        self.receiver = receiver
        self.clock_rate = clock_rate
        self.mode: SenderClock = sender_clock
        self.report: SenderReport | None = None
        self.reports = 0
        self._min_transit: float | None = None
        self._usable = False
        try:
            check_internals(receiver)
        except InternalsChanged as exc:
            log.warning("%s: capture times fall back to arrival times", exc)
            return
        self._usable = True
        original = receiver._handle_rtcp_packet
        clock = self

        async def handle_rtcp_packet(packet: Any) -> None:
            try:
                clock._observe(packet)
            except Exception:  # never break aiortc's RTCP path over a timestamp
                log.exception("RTCP clock: cannot read a sender report")
            await original(packet)

        receiver._handle_rtcp_packet = handle_rtcp_packet

    def _observe(self, packet: Any) -> None:
        from aiortc.rtp import RtcpSrPacket

        if not isinstance(packet, RtcpSrPacket):
            return
        if packet.ssrc in getattr(self.receiver, _RTX):
            return  # retransmission stream: same media, not the clock we map
        info = packet.sender_info
        self.report = SenderReport(
            packet.ssrc,
            ntp_to_unix(info.ntp_timestamp),
            info.rtp_timestamp,
            asyncio.get_running_loop().time(),
        )
        self.reports += 1

    def sender_time(self, pts: int) -> float | None:
        """The sender's wall time (unix seconds) at which frame `pts` was captured."""
        report = self.report
        origin = getattr(getattr(self.receiver, _MAPPER), "_origin", None)
        if report is None or origin is None or pts is None:
            return None
        raw = (int(pts) + origin) & 0xFFFFFFFF
        ticks = ((raw - report.rtp + 2**31) % 2**32) - 2**31
        return report.sender_unix + ticks / self.clock_rate

    def stamp(self, frame: Any, arrival: float) -> tuple[float, TimeSource]:
        if not self._usable:
            return arrival, "arrival"
        sent = self.sender_time(frame.pts)
        if sent is None:
            return arrival, "arrival"
        if self.mode == "auto":
            transit = time.time() - sent
            self.mode = "synced" if 0.0 <= transit < 2.0 else "relative"
            log.info("RTCP clock: sender clock taken as %s (transit %.3f s)", self.mode, transit)
        if self.mode == "synced":
            # Both clocks read back to back: wall minus monotonic is the offset.
            capture = sent - time.time() + asyncio.get_running_loop().time()
            return min(capture, arrival), "rtcp"
        transit = arrival - sent
        if self._min_transit is None or transit < self._min_transit:
            self._min_transit = transit
        # The smallest transit is at most this frame's, but on unix seconds (an ulp of
        # ~2.4e-7 s) the sum can round past the arrival: a capture is never later.
        return min(sent + self._min_transit, arrival), "rtcp"
