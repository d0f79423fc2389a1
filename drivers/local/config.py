"""Options of a local camera (`v4l2:///dev/video0`, `lavfi://testsrc=size=640x480:rate=30`)."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.errors import DriverConfigError


@dataclass(frozen=True, slots=True)
class LocalCameraConfig:
    """`source` is the device path or the lavfi filter graph.

    `size`/`fps`/`input_format` are passed to the V4L2 demuxer (ignored by
    lavfi, whose graph says it all); `name` defaults to the device's basename
    or "lavfi".
    """

    source: str = ""
    name: str | None = None
    size: str | None = None
    fps: float | None = None
    input_format: str | None = None

    def __post_init__(self) -> None:
        if not self.source:
            raise DriverConfigError("local camera: needs a source (device path or lavfi graph)")
        if self.size is not None:
            w, _, h = self.size.partition("x")
            if not (w.isdigit() and h.isdigit()):
                raise DriverConfigError(f"size {self.size!r} must look like 640x480")
        if self.fps is not None and not self.fps > 0:
            raise DriverConfigError(f"fps must be > 0, got {self.fps!r}")
