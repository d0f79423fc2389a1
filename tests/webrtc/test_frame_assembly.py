"""A video frame leaves the jitter buffer at its marker packet; everything else is aiortc's.

Packets are fed to `MarkerJitterBuffer` and to aiortc's own `JitterBuffer`
side by side: ours must give the same frames, in the same order, never
later, and earlier exactly when the marker allows (all packets of the frame
present up to the marked one).
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from drivers.webrtc.frame_assembly import (
    _BUFFER,
    MarkerJitterBuffer,
    complete_frames_at_marker,
)
from drivers.webrtc.paint import PaintedTrack, read_frame, unwrap
from drivers.webrtc.publish import WhipPublisher
from drivers.webrtc.whip import WhipCamera
from tests.webrtc.helpers import eventually


def packet(seq: int, ts: int, marker: bool, data: bytes = b"") -> RtpPacket:
    p = RtpPacket(sequence_number=seq % 65536, timestamp=ts, marker=int(marker))
    p._data = data or f"{seq}".encode()  # type: ignore[attr-defined]
    return p


def stream(frames: list[int], marker: bool = True, first_seq: int = 0) -> list[RtpPacket]:
    """Packets of frames of the given sizes, timestamps 3000 apart (30 fps at 90 kHz)."""
    out, seq = [], first_seq
    for i, size in enumerate(frames):
        for k in range(size):
            out.append(packet(seq, 1000 + 3000 * i, marker and k == size - 1))
            seq += 1
    return out


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, bytes, int]]:
    """(index of the packet that completed it, data, timestamp) of every frame out."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.data, frame.timestamp))
    return out


def test_a_frame_is_out_at_its_marker_not_when_the_next_one_starts():
    packets = stream([1, 3, 2])
    ours = feed(MarkerJitterBuffer(128), packets)
    theirs = feed(JitterBuffer(128, is_video=True), packets)
    # Each at its own last packet; aiortc's at the next frame's first, the last one held.
    assert [i for i, _, _ in ours] == [0, 3, 5]
    assert [i for i, _, _ in theirs] == [1, 4]
    assert [d for _, d, _ in ours][:2] == [d for _, d, _ in theirs]
    assert ours[1][1] == b"123"


def test_a_lost_marker_leaves_the_frame_to_the_timestamp_rule():
    packets = stream([2, 2, 2], marker=False)
    buffer = MarkerJitterBuffer(128)
    assert feed(buffer, packets) == feed(JitterBuffer(128, is_video=True), packets)
    assert buffer.marked_frames == 0


def test_a_marker_that_arrives_before_a_missing_packet_waits_for_it():
    first, a, b, c = stream([1, 3])
    buffer = MarkerJitterBuffer(128)
    assert buffer.add(first)[1] is not None
    assert buffer.add(a)[1] is None
    assert buffer.add(c)[1] is None  # the marker, but b is missing: not complete
    frame = buffer.add(b)[1]  # b retransmitted: now it is
    assert frame is not None and frame.data == b"123"


def test_a_frame_whose_first_packet_is_lost_is_not_completed_at_its_marker():
    packets = stream([2, 2, 3])
    del packets[4]  # the third frame's first packet
    ours = feed(MarkerJitterBuffer(128), packets)
    assert [d for _, d, _ in ours] == [b"01", b"23"]


def _scrambled(seed: int, loss: float) -> tuple[list[RtpPacket], dict[int, bytes], int]:
    """A stream with markers now and then missing, neighbours swapped, and `loss` of
    its packets dropped; the whole frames' data by timestamp; the number of frames."""
    rng = random.Random(seed)
    sizes = [rng.randint(1, 6) for _ in range(80)]
    packets = stream(sizes, marker=True, first_seq=rng.randrange(65536))  # wraps at times
    whole: dict[int, bytes] = {}
    for p in packets:
        whole[p.timestamp] = whole.get(p.timestamp, b"") + p._data
        if rng.random() < 0.1:
            p.marker = 0  # a sender that forgets, or a marker lost with its packet's header
    kept = [p for p in packets if rng.random() >= loss]
    for i in range(len(kept) - 1):
        if rng.random() < 0.05:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return kept, whole, len(sizes)


def _marked_whole(buffer: MarkerJitterBuffer, packets, whole) -> dict[int, int]:
    """Feed `packets`; assert every frame given out at a marker is whole; return
    {timestamp: index of the packet that freed it} of the whole frames out."""
    out, marked = {}, 0
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is None:
            continue
        if buffer.marked_frames > marked:
            marked = buffer.marked_frames
            # A stream's first frame may lack its head, as aiortc's (its first packet late).
            if out or frame.timestamp != min(whole):
                assert frame.data == whole[frame.timestamp], "a frame out at its marker is partial"
        if frame.data == whole[frame.timestamp]:
            out[frame.timestamp] = i
    return out


@pytest.mark.parametrize("seed", range(30))
def test_with_reordering_and_lost_markers_aiortcs_frames_come_out_and_never_later(seed: int):
    packets, whole, frames = _scrambled(seed, loss=0.0)
    buffer = MarkerJitterBuffer(64)
    ours = _marked_whole(buffer, packets, whole)
    theirs = feed(JitterBuffer(64, is_video=True), packets)
    # Only a stream's first frame may lack its head (its first packet arrived late).
    theirs = [(i, d, t) for i, d, t in theirs if d == whole[t]]
    for i, _, t in theirs:
        assert ours[t] <= i, (t, ours[t], i)
    assert len(ours) >= len(theirs) >= frames - 3
    assert buffer.marked_frames > frames // 2
    assert sum(ours[t] < i for i, _, t in theirs) > len(theirs) // 2


def test_under_packet_loss_a_frame_given_out_at_its_marker_is_always_whole():
    """Loss makes aiortc drop packets to make room; whatever it leaves at the buffer's
    start, a frame completed at a marker has every packet of its timestamp."""
    marked = 0
    for seed in range(40):
        packets, whole, _ = _scrambled(seed, loss=0.03)
        buffer = MarkerJitterBuffer(64)
        _marked_whole(buffer, packets, whole)  # asserts it, frame by frame
        marked += buffer.marked_frames
    assert marked > 300  # and markers did some of the work (14 % of 3200 frames here)


def test_after_aiortc_drops_packets_a_partial_frame_never_comes_out_and_markers_resume():
    """A packet lost for good stalls the buffer until aiortc makes room (overflow) and
    drops what it must; frames then flow again, and markers complete them again."""
    packets = stream([3] * 30)
    whole: dict[int, bytes] = {}
    for p in packets:
        whole[p.timestamp] = whole.get(p.timestamp, b"") + p._data
    del packets[4]  # the second frame's middle packet
    buffer = MarkerJitterBuffer(16)
    got = feed(buffer, packets)
    assert all(d == whole[t] for _, d, t in got)
    assert 4000 not in {t for _, _, t in got}  # the frame that lost a packet was dropped
    assert len(got) >= 27 and buffer.marked_frames >= 5


class _Receiver:
    def __init__(self, buffer: object) -> None:
        setattr(self, _BUFFER, buffer)


def test_only_an_empty_aiortc_video_buffer_is_replaced(caplog):
    fresh = _Receiver(JitterBuffer(512, is_video=True))
    buffer = complete_frames_at_marker(fresh)
    assert isinstance(buffer, MarkerJitterBuffer) and getattr(fresh, _BUFFER) is buffer
    assert buffer.capacity == 512
    assert complete_frames_at_marker(fresh) is buffer  # twice: the same one
    started = JitterBuffer(512, is_video=True)
    started.add(packet(7, 1000, False))
    assert complete_frames_at_marker(_Receiver(started)) is None  # packets would be lost
    audio = _Receiver(JitterBuffer(16, prefetch=4))
    with caplog.at_level(logging.WARNING):
        assert complete_frames_at_marker(audio) is None
        assert complete_frames_at_marker(object()) is None
    assert "internals changed" in caplog.text
    assert type(getattr(audio, _BUFFER)) is JitterBuffer


@pytest.mark.virtual_clock
async def test_a_whip_frame_reaches_the_camera_before_the_next_one_is_sent():
    """At 5 fps, a frame that waited for the next one to start would be 200 ms old on arrival."""
    loop = asyncio.get_running_loop()
    cam = WhipCamera.from_spec("127.0.0.1:0/front", {})
    async with cam, WhipPublisher(cam.url, PaintedTrack(5)):
        await eventually(lambda: cam.session is not None, 8, "a live session")
        seen = (await cam.newest.wait_newer(0)).version
        delays = []
        for _ in range(8):
            stamped = await cam.newest.wait_newer(seen)
            seen = stamped.version
            item = stamped.value
            delays.append(item.arrival - unwrap(read_frame(item.frame), loop.time()))
        buffer = getattr(cam.session.receiver, _BUFFER)
    assert isinstance(buffer, MarkerJitterBuffer) and buffer.marked_frames >= 8
    assert max(delays) < 0.1, delays
