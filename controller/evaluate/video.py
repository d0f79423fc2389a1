"""One episode as an MP4: the front camera, with the instruction, feature age and outcome drawn.

The frames were sampled at a fixed rate while the episode ran
(`episodes.Filmer`); the overlay is drawn afterwards, when the outcome is
known: each frame shows the instruction, the world time, the age of the
features the controller would act on (and a hold, if it was holding), and
the outcome (after the touch, "touched at T s"; a failed episode's last
second says how close it came). Encoded as H.264 through PyAV, with the
recorder's encoder (`controller.recording.video.SegmentEncoder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from controller.evaluate.episodes import FilmedFrame
from controller.evaluate.report import EpisodeResult

#: Frames are upscaled so that the text is legible on a 224x224 camera image.
SCALE = 2
#: Text height (px) on the upscaled frame.
FONT_SIZE = 16
#: The last frame is held this long with the final outcome.
HOLD_END_S = 1.0


def _lines(frame: FilmedFrame, result: EpisodeResult, *, final: bool, mode: str) -> list[str]:
    age = "-" if frame.feature_age is None else f"{frame.feature_age * 1e3:.0f} ms"
    tts = result.time_to_success_s
    if tts is not None and frame.world_time >= tts:
        outcome = f"SUCCESS: touched at {tts:.2f} s"
    elif final:
        outcome = f"FAILED: closest {result.min_distance_m * 100:.1f} cm"
    else:
        outcome = "reaching..."
    if frame.holding and not final:
        outcome += f"  HOLD {frame.holding}"
    return [
        result.instruction,
        f"t {frame.world_time:5.2f} s   {mode}   feature age {age}",
        outcome,
    ]


def _draw(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    img = img.resize((img.width * SCALE, img.height * SCALE), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    try:
        font: Any = ImageFont.load_default(size=FONT_SIZE)  # FreeType's scalable default
    except (TypeError, ImportError, OSError):  # a Pillow without FreeType: the bitmap font
        font = ImageFont.load_default()
    line = FONT_SIZE + 4
    draw.rectangle((0, 0, img.width, 2 * line + 4), fill=(0, 0, 0))
    draw.text((6, 2), lines[0], fill=(255, 255, 255), font=font)
    draw.text((6, 2 + line), lines[1], fill=(200, 200, 200), font=font)
    outcome = lines[2]
    colour = (
        (80, 220, 80)
        if outcome.startswith("SUCCESS")
        else (240, 80, 80)
        if outcome.startswith("FAILED")
        else (230, 230, 230)
    )
    draw.rectangle((0, img.height - line - 4, img.width, img.height), fill=(0, 0, 0))
    draw.text((6, img.height - line - 2), outcome, fill=colour, font=font)
    return np.asarray(img)


def write_episode_video(
    frames: Sequence[FilmedFrame], result: EpisodeResult, path: str | Path, *, fps: float, mode: str
) -> Path:
    """Encode the filmed frames of `result`'s episode to `path` (MP4, H.264)."""
    from controller.recording.video import DEFAULT_CRF, SegmentEncoder, even_size

    if not frames:
        raise ValueError("no frames were filmed (the episode ended before its first frame)")
    out = Path(path)
    rate = max(1, round(fps))
    held = [frames[-1]] * max(1, round(HOLD_END_S * rate))
    drawn = [_draw(f.image, _lines(f, result, final=False, mode=mode)) for f in frames[:-1]] + [
        _draw(f.image, _lines(f, result, final=True, mode=mode)) for f in held
    ]
    h, w = drawn[0].shape[:2]
    ew, eh = even_size(w, h)
    encoder = SegmentEncoder(out, width=ew, height=eh, fps=rate, crf=DEFAULT_CRF)
    try:
        for image in drawn:
            encoder.add(np.ascontiguousarray(image[:eh, :ew]))
    except BaseException:
        encoder.abort()
        raise
    encoder.close()
    return out
