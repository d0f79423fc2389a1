"""Camera frames to MP4 (H.264 through PyAV), and episodes appended to a dataset's video file.

LeRobot finds frame k of an episode at `from_timestamp + k / fps` in its
video file, within 0.1 ms: every video here is constant-rate, frame k at
presentation time k / fps, so an episode appended to a file starts exactly
where the previous one ended.

Encoding choices, and why:
- H.264 (libx264), `yuv420p`: LeRobot reads H.264 (its default is AV1,
  which PyAV here can write, but far fewer decoders read);
- a keyframe every 2 frames (`g=2`, LeRobot's setting): a training loader
  seeks to random frames, and each seek decodes from the last keyframe;
- no B-frames: decode order is presentation order, so an episode segment
  can be cut or appended by copying packets, never re-encoded;
- one encoder thread: the recorder must not take the cores the control
  loop and the VL encoder run on.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

#: The pixel format LeRobot's `info.json` names (PyAV's name).
PIX_FMT = "yuv420p"
#: Video quality (libx264 CRF): lossy, a frame's pixels within ~2 levels on average
#: (measured on the fake camera's frames: mean absolute error under 1.8 of 255).
DEFAULT_CRF = 23


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even dimensions: an odd camera size is scaled down by one pixel."""
    return max(2, width - width % 2), max(2, height - height % 2)


class SegmentEncoder:
    """Encodes one camera's frames of one episode into an MP4 file, frame k at k / fps."""

    def __init__(self, path: Path, *, width: int, height: int, fps: int, crf: int) -> None:
        self.path = path
        self.width, self.height = width, height
        self.frames = 0
        self._container: Any = av.open(str(path), "w")
        try:
            stream = self._container.add_stream(
                "libx264",
                rate=fps,
                options={"g": "2", "bf": "0", "crf": str(crf), "preset": "veryfast"},
            )
            stream.width, stream.height, stream.pix_fmt = width, height, PIX_FMT
            stream.codec_context.thread_count = 1
        except BaseException:
            self._container.close()
            raise
        self._stream = stream

    def add(self, rgb: np.ndarray) -> None:
        """Append one `(height, width, 3)` uint8 RGB frame of the segment's size."""
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"frame of shape {rgb.shape}, segment is {self.height}x{self.width}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush and close; the file is complete only after this."""
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:
            pass
        self.path.unlink(missing_ok=True)


def append(base: Path | None, base_frames: int, segment: Path, out: Path, fps: int) -> None:
    """Write `out`: the first `base_frames` frames of `base` (if any), then all of `segment`.

    Packets are copied, not re-encoded. Frames of `base` past `base_frames`
    (left by a commit that was cut short) are not copied: the dataset's
    metadata says where its episodes end, and what follows is not one.
    """
    with av.open(str(segment)) as seg:
        seg_stream = seg.streams.video[0]
        with av.open(str(out), "w", format="mp4") as dst:
            out_stream = dst.add_stream_from_template(seg_stream)
            offset = 0
            if base is not None and base_frames > 0:
                with av.open(str(base)) as src:
                    src_stream = src.streams.video[0]
                    limit = _ticks(base_frames, fps, src_stream.time_base)
                    _copy(src, src_stream, dst, out_stream, shift=0, limit=limit)
                    offset = _ticks(base_frames, fps, out_stream.time_base)
            _copy(seg, seg_stream, dst, out_stream, shift=offset, limit=None)


def _ticks(frames: int, fps: int, time_base: Fraction | None) -> int:
    assert time_base is not None
    return round(Fraction(frames, fps) / time_base)


def _copy(
    src: Any, src_stream: Any, dst: Any, out_stream: Any, *, shift: int, limit: int | None
) -> None:
    scale = src_stream.time_base / out_stream.time_base
    for packet in src.demux(src_stream):
        if packet.dts is None or packet.pts is None:
            continue  # the demuxer's flush packet
        if limit is not None and packet.pts >= limit:
            continue
        packet.pts = round(packet.pts * scale) + shift
        packet.dts = round(packet.dts * scale) + shift
        packet.stream = out_stream
        dst.mux(packet)


def video_info(path: Path) -> dict[str, Any]:
    """The `info` block LeRobot keeps per video feature in `meta/info.json`."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": False,
        }
