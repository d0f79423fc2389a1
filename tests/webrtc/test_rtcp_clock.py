"""The RTCP clock reads aiortc internals: this fails loudly if they change."""

from __future__ import annotations

import aiortc
from aiortc import RTCPeerConnection

from drivers.webrtc.rtcp_clock import RtcpClock, SenderReport, check_internals, ntp_to_unix


async def test_aiortc_receiver_internals_are_where_the_clock_reads_them() -> None:
    assert aiortc.__version__.startswith("1.16."), (
        f"aiortc {aiortc.__version__}: rtcp_clock was written against 1.16; "
        "check its internals and move the pin in pyproject"
    )
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        check_internals(receiver)  # raises InternalsChanged, naming what moved
        clock = RtcpClock(receiver)
        assert clock._usable
    finally:
        await pc.close()


class _Mapper:
    _origin = 2**32 - 9000  # first frame just before an RTP wrap


class _Receiver:
    _RTCRtpReceiver__timestamp_mapper = _Mapper()
    _RTCRtpReceiver__rtx_ssrc: dict[int, int] = {}

    async def _handle_rtcp_packet(self, packet: object) -> None:
        pass


def test_sender_time_follows_rtp_across_a_wrap() -> None:
    clock = RtcpClock(_Receiver())
    clock.report = SenderReport(1, sender_unix=1000.0, rtp=2**32 - 9000, received=0.0)
    assert clock.sender_time(0) == 1000.0
    assert abs(clock.sender_time(90_000) - 1001.0) < 1e-9  # wrapped raw timestamp


def test_ntp_conversion() -> None:
    assert ntp_to_unix((2_208_988_800 + 5) << 32 | (1 << 31)) == 5.5


class _Frame:
    pts = 0


def test_a_capture_time_is_never_after_its_arrival_even_by_rounding() -> None:
    """Sender times are unix seconds (~1.8e9, an ulp of 2.4e-7 s): in "relative" mode
    `sent + (arrival - sent)` rounded up past the arrival (found in a CI run)."""
    clock = RtcpClock(_Receiver(), sender_clock="relative")
    clock.report = SenderReport(1, sender_unix=1800000004.954351, rtp=2**32 - 9000, received=0.0)
    arrival = 1004.4949106478874
    capture, source = clock.stamp(_Frame(), arrival)
    assert source == "rtcp" and capture <= arrival
    assert arrival - capture < 1e-6
