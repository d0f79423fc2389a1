"""The shared-memory frame ring, both sides in one process: what the worker reads is what was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.shm_frames import ALIGN, FrameReader, FrameRing, leftover_segments
from drivers.base import Frame

SHM = Path("/dev/shm")


def frames(seed: int, sizes: list[tuple[int, int]]) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(f"cam{i}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 10.0 + i, seed * 10 + i)
        for i, (h, w) in enumerate(sizes)
    ]


def test_frames_read_back_equal_in_place_and_read_only():
    ring, reader = FrameRing(slots=2), FrameReader()
    try:
        sent = frames(1, [(48, 64), (30, 40)])
        ref = ring.write(sent)
        got = reader.frames(ref)
        for a, b in zip(sent, got, strict=True):
            assert (b.camera, b.seq, b.capture_time, b.time_source) == (
                a.camera,
                a.seq,
                a.capture_time,
                a.time_source,
            )
            assert b.image.dtype == np.uint8 and np.array_equal(a.image, b.image)
            assert b.image.ctypes.data % ALIGN == 0
            with pytest.raises(ValueError):
                b.image[0, 0, 0] = 1  # the worker cannot scribble on the controller's slot
        del got
    finally:
        reader.close()
        ring.close()
    assert leftover_segments() == []


def test_slots_take_turns_and_a_bigger_set_grows_the_segment():
    ring, reader = FrameRing(slots=2), FrameReader()
    try:
        a = ring.write(frames(1, [(48, 64)]))
        b = ring.write(frames(2, [(48, 64)]))
        assert a.segment == b.segment
        assert b.frames[0].offset - a.frames[0].offset == ring.slot_bytes
        c = ring.write(frames(3, [(48, 64)]))
        assert (
            c.frames[0].offset == a.frames[0].offset
        )  # two slots: the third write reuses the first
        first = ring.segment
        big = frames(4, [(96, 128), (48, 64)])
        d = ring.write(big)
        assert d.segment != first and ring.slot_bytes >= 96 * 128 * 3 + 48 * 64 * 3
        assert not (SHM / first).exists()  # the old segment is unlinked at once
        assert all(
            np.array_equal(x.image, y.image) for x, y in zip(big, reader.frames(d), strict=True)
        )
    finally:
        reader.close()
        ring.close()
        ring.close()  # harmless twice
    assert leftover_segments() == []
    with pytest.raises(RuntimeError, match="closed"):
        ring.write(frames(5, [(8, 8)]))
