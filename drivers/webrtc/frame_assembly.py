"""A received video frame is complete at its last packet, not when the next frame begins.

Why. aiortc's video jitter buffer knows a frame is complete only when a
packet with a different RTP timestamp arrives, that is, when the NEXT frame
starts: every frame waits one frame interval in the buffer before it is
decoded. Camera to slot over WHIP on loopback measured 104, 37 and 21 ms p50
at 10, 30 and 60 fps (`python -m controller.bench camera --fps F`): one
interval plus ~4 ms of encoding, transport and decoding. For a controller
that acts on the newest frame, that interval is pure age.

The RTP marker bit ends a video frame (RFC 3550 5.1; VP8: RFC 7741 4.1;
H.264: RFC 6184 5.1; aiortc's and the browsers' senders set it on a frame's
last packet). So `MarkerJitterBuffer` also completes a frame when the
packets from the buffer's first one up to a packet with the marker set are
all present and share one timestamp. Everything else is aiortc's: the
marker is only a hint (a lost marker packet, or a sender that never sets
it, leaves the frame to the timestamp rule, one interval later, as before);
a gap before the marker waits for the missing packet (retransmitted after a
NACK) or for aiortc's own overflow handling; reordering, PLI requests and
capacity are unchanged.

aiortc has no public hook for its jitter buffer, so `complete_frames_at_marker`
swaps the receiver's private one while it is still empty (before any RTP);
aiortc's minor version is pinned in pyproject, and a receiver whose
internals moved keeps its own buffer, with a warning (frames then arrive
one interval later, nothing else changes).
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

#: Where aiortc's RTCRtpReceiver keeps its jitter buffer (name-mangled private attribute).
_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, which also completes a frame at its marker packet."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, is_video=True)
        #: Frames completed at their marker packet (the rest by the timestamp rule).
        self.marked_frames = 0
        #: Sequence number of the first packet after the last frame given out: the
        #: buffer's first packet starts a frame only while its origin is still here.
        self._frame_start: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli_flag, frame = super().add(packet)
        if self._frame_start is None:
            self._frame_start = self._origin  # the stream's first packet (see below)
        if frame is not None:
            # The timestamp rule gave a frame out: the buffer now starts where the
            # timestamp changed, the first packet of the next frame.
            self._frame_start = self._origin
        else:
            # Any packet may complete a frame: the marker packet itself, or one that
            # fills the last gap before a marker that arrived early.
            frame = self._frame_up_to_marker()
        return pli_flag, frame

    def _frame_up_to_marker(self) -> JitterFrame | None:
        """The first frame, if its packets are all here up to one with the marker set.

        Only while the buffer is known to start at a frame's first packet:
        after aiortc dropped packets to make room or to resynchronise, the
        first packet may be a frame's middle, and a frame from there would
        lack its head; then the timestamp rule gives the next frame out, and
        marks the start again. A stream's first packet is taken as a frame's
        start: senders start on a frame after DTLS, and a receiver that does
        join mid-frame gives that partial frame to the decoder as aiortc's
        buffer would (it fails to decode, and a PLI asks for a key frame).
        Waiting for the timestamp rule there instead would cost more than one
        frame: one frame goes out per packet, so with frames of one packet
        each the buffer would stay a frame behind.
        """
        if self._origin is None or self._origin != self._frame_start:
            return None
        packets: list[RtpPacket] = []
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None  # a gap (wait for it), or a frame the timestamp rule handles
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                self._frame_start = self._origin
                self.marked_frames += 1
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None


def complete_frames_at_marker(receiver: Any) -> MarkerJitterBuffer | None:
    """Give a video receiver a `MarkerJitterBuffer` before any RTP arrives; None if it cannot.

    Called where a driver first holds the receiver (the track has been
    announced, no media has flowed: DTLS comes after the SDP exchange).
    Returns None, changing nothing, when the receiver's buffer is not
    aiortc's video jitter buffer or already holds packets.
    """
    current = getattr(receiver, _BUFFER, None)
    if isinstance(current, MarkerJitterBuffer):
        return current
    if type(current) is not JitterBuffer or not getattr(current, "_is_video", False):
        log.warning(
            "aiortc's RTCRtpReceiver internals changed (no video jitter buffer at %s):"
            " frames are complete only when the next one starts, one frame interval later",
            _BUFFER,
        )
        return None
    if current._origin is not None:
        log.debug("receiver already has packets buffered: its jitter buffer stays aiortc's")
        return None
    buffer = MarkerJitterBuffer(current.capacity)
    setattr(receiver, _BUFFER, buffer)
    return buffer
