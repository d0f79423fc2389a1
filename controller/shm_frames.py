"""Camera frames into shared memory for the VL worker process: a fixed ring of slots.

The process VL lane (`controller.vl_process`) must hand the newest frame of
every camera to another process without pushing megabytes of pixels
through a pipe (pickling them would copy each image twice and hold the
controller's GIL for the copy). Instead the controller owns one shared
memory segment cut into `slots` equal slots, each big enough for one frame
set; it copies the images of a set into the next slot and sends the worker
only a `SlotRef`: the segment's name and, per frame, its metadata and
where its pixels lie. The worker maps the segment once and hands the
policy read-only arrays that view the slot in place: no copy on its side.

Slots are sized from the frames: the first set decides, a larger set later
(a camera that changed resolution) replaces the segment with a bigger one,
and the worker maps the new name when it first sees it. The VL lane runs
one encode at a time, so a slot is rewritten only `slots` encodes after it
was read: a policy may keep its frames until then, not longer.

The writer (`FrameRing`) creates and unlinks every segment; the reader
(`FrameReader`) only attaches. `FrameRing.close()` unlinks in every case,
so no segment outlives the controller's run; if the controller process is
killed outright, Python's resource tracker unlinks what it registered.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from drivers.base import Frame

log = logging.getLogger(__name__)

#: Every image starts on a cache-line boundary: a SIMD kernel reading it in
#: place never straddles one because of where the previous image ended.
ALIGN = 64

#: Segment names start with this (then the owner's pid), so a leak is easy to spot in /dev/shm.
PREFIX = "vlproc"


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def segment_prefix(pid: int | None = None) -> str:
    """The name prefix of the segments a process creates (`/dev/shm/<prefix>...` on Linux)."""
    return f"{PREFIX}_{os.getpid() if pid is None else pid}_"


def leftover_segments(pid: int | None = None) -> list[str]:
    """Segments of a process (this one by default) still in /dev/shm: none once it closed
    its rings (Linux; elsewhere the list is empty)."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return []
    prefix = segment_prefix(pid)
    return sorted(n for n in names if n.startswith(prefix))


@dataclass(frozen=True, slots=True)
class FrameRef:
    """One frame of a slot: its metadata, and where its pixels lie in the segment."""

    camera: str
    seq: int
    capture_time: float
    time_source: str
    offset: int
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SlotRef:
    """What goes through the pipe for one frame set: a few hundred bytes, whatever the images."""

    segment: str
    frames: tuple[FrameRef, ...]


class FrameRing:
    """The controller's side: owns the segment, writes frame sets into its slots in turn.

    Not thread-safe: one writer (the VL lane's thread) at a time; the caller
    serialises `write` and `close`.
    """

    def __init__(self, slots: int = 2) -> None:
        if slots < 1:
            raise ValueError(f"a ring needs at least one slot, got {slots}")
        self.slots = slots
        self.slot_bytes = 0
        self.writes = 0
        self._shm: shared_memory.SharedMemory | None = None
        self._closed = False
        #: Every segment this ring created, unlinked or not (tests look for leftovers).
        self.created: list[str] = []

    @property
    def segment(self) -> str | None:
        return None if self._shm is None else self._shm.name

    def write(self, frames: Sequence[Frame]) -> SlotRef:
        """Copy the images of `frames` into the next slot; return what the reader needs."""
        if self._closed:
            raise RuntimeError("frame ring is closed")
        images = [np.ascontiguousarray(f.image) for f in frames]
        need = sum(_aligned(img.nbytes) for img in images)
        if self._shm is None or need > self.slot_bytes:
            self._replace(max(need, ALIGN))
        assert self._shm is not None
        base = (self.writes % self.slots) * self.slot_bytes
        self.writes += 1
        refs = []
        offset = base
        for frame, img in zip(frames, images, strict=True):
            dst = np.ndarray(img.shape, dtype=img.dtype, buffer=self._shm.buf, offset=offset)
            np.copyto(dst, img)
            del dst  # release the buffer export at once, so the segment can be closed
            refs.append(
                FrameRef(
                    camera=frame.camera,
                    seq=frame.seq,
                    capture_time=frame.capture_time,
                    time_source=frame.time_source,
                    offset=offset,
                    dtype=img.dtype.str,
                    shape=tuple(img.shape),
                )
            )
            offset += _aligned(img.nbytes)
        return SlotRef(self._shm.name, tuple(refs))

    def _replace(self, slot_bytes: int) -> None:
        """A new segment of `slots` slots of `slot_bytes`; the old one is unlinked."""
        old = self._shm
        name = segment_prefix() + secrets.token_hex(4)
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=slot_bytes * self.slots)
        self.created.append(self._shm.name)
        self.slot_bytes = slot_bytes
        if old is not None:
            log.info(
                "VL frame ring grown to %d slots of %d bytes (%s)", self.slots, slot_bytes, name
            )
            _release(old)

    def close(self) -> None:
        """Unlink the segment; safe to call twice."""
        self._closed = True
        shm, self._shm = self._shm, None
        if shm is not None:
            _release(shm)


def _release(shm: shared_memory.SharedMemory) -> None:
    """Unlink first (the name is what could leak), then unmap if nothing views it any more."""
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
    try:
        shm.close()
    except BufferError:
        # A view is still alive on another thread; the mapping goes with it.
        pass


class FrameReader:
    """The worker's side: maps segments by name, turns a `SlotRef` into read-only frames."""

    def __init__(self) -> None:
        self._shm: shared_memory.SharedMemory | None = None

    def frames(self, ref: SlotRef) -> list[Frame]:
        if self._shm is None or self._shm.name != ref.segment:
            self.close()
            self._shm = shared_memory.SharedMemory(name=ref.segment)
        buf = self._shm.buf
        out = []
        for f in ref.frames:
            image = np.ndarray(f.shape, dtype=np.dtype(f.dtype), buffer=buf, offset=f.offset)
            image.flags.writeable = False
            out.append(Frame(f.camera, image, f.capture_time, f.seq, f.time_source))  # type: ignore[arg-type]
        return out

    def close(self) -> None:
        shm, self._shm = self._shm, None
        if shm is not None:
            try:
                shm.close()
            except BufferError:
                pass  # a policy kept a frame; the mapping goes when it lets go
