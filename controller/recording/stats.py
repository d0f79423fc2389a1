"""Feature statistics as LeRobot's `meta/stats.json` and per-episode `stats/...` columns hold them.

Every numeric feature gets `min`, `max`, `mean`, `std`, `count` and the
quantiles `q01`, `q10`, `q50`, `q90`, `q99`, one value per vector element
(shape `(1,)` for a scalar column); a video feature gets the same per colour
channel, scaled to [0, 1], with shape `(3, 1, 1)`, and `count` is its number
of frames. Training code normalises inputs with these, so they must be what
the reader expects, not merely plausible.

Image statistics are exact and streaming: a 256-bin histogram per channel is
all that is needed for uint8 pixels (min, max, mean, std and quantiles all
follow from it), so the writer thread adds one frame at a time and never
keeps frames in memory. Across episodes, means and variances combine exactly
(weighted by count); quantiles are combined as a count-weighted mean, an
approximation (the one LeRobot makes too), since the per-episode values are
all the dataset keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

#: Quantiles every feature's statistics carry, with their keys.
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}

Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """Statistics of one numeric column: `values` is `(frames,)` or `(frames, n)`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"statistics need (frames, n) values, got shape {np.shape(values)}")
    out: Stats = {
        "min": arr.min(axis=0),
        "max": arr.max(axis=0),
        "mean": arr.mean(axis=0),
        "std": arr.std(axis=0),
        "count": np.array([arr.shape[0]], dtype=np.int64),
    }
    for key, q in QUANTILES.items():
        out[key] = np.quantile(arr, q, axis=0)
    return out


class ImageStats:
    """Per-channel statistics of uint8 RGB frames, accumulated frame by frame."""

    def __init__(self) -> None:
        self.frames = 0
        self._hist = np.zeros((3, 256), dtype=np.int64)

    def add(self, rgb: np.ndarray) -> None:
        """Count one `(height, width, 3)` uint8 frame's pixels."""
        for c in range(3):
            self._hist[c] += np.bincount(rgb[..., c].ravel(), minlength=256)
        self.frames += 1

    def result(self) -> Stats:
        """The statistics in [0, 1], shaped `(3, 1, 1)`; `count` is the number of frames."""
        if self.frames == 0:
            raise ValueError("no frames were counted")
        levels = np.arange(256, dtype=np.float64) / 255.0
        out: dict[str, list[float]] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
        for hist in self._hist:
            total = hist.sum()
            present = np.flatnonzero(hist)
            mean = float((hist * levels).sum() / total)
            out["min"].append(float(levels[present[0]]))
            out["max"].append(float(levels[present[-1]]))
            out["mean"].append(mean)
            out["std"].append(float(np.sqrt((hist * (levels - mean) ** 2).sum() / total)))
            cumulative = np.cumsum(hist)
            for key, q in QUANTILES.items():
                # The smallest level with at least a fraction q of the pixels at or below it.
                index = int(np.searchsorted(cumulative, q * total, side="left"))
                out[key].append(float(levels[min(index, 255)]))
        stats: Stats = {k: np.array(v).reshape(3, 1, 1) for k, v in out.items()}
        stats["count"] = np.array([self.frames], dtype=np.int64)
        return stats


def aggregate(parts: Iterable[Mapping[str, Stats]]) -> dict[str, Stats]:
    """Combine per-episode statistics into the dataset's (exact for mean and std)."""
    by_feature: dict[str, list[Stats]] = {}
    for part in parts:
        for feature, stats in part.items():
            by_feature.setdefault(feature, []).append(stats)
    return {feature: _combine(items) for feature, items in by_feature.items()}


def _combine(items: list[Stats]) -> Stats:
    counts = np.array([float(s["count"][0]) for s in items])
    total = counts.sum()
    shape = (len(items),) + (1,) * np.asarray(items[0]["mean"]).ndim
    w = (counts / total).reshape(shape)
    means = np.stack([np.asarray(s["mean"], dtype=np.float64) for s in items])
    variances = np.stack([np.asarray(s["std"], dtype=np.float64) ** 2 for s in items])
    mean = (w * means).sum(axis=0)
    variance = (w * (variances + (means - mean) ** 2)).sum(axis=0)
    out: Stats = {
        "min": np.min(np.stack([s["min"] for s in items]), axis=0),
        "max": np.max(np.stack([s["max"] for s in items]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for key in QUANTILES:
        if all(key in s for s in items):
            out[key] = (w * np.stack([np.asarray(s[key], dtype=np.float64) for s in items])).sum(
                axis=0
            )
    return out


def to_json(stats: Mapping[str, Stats]) -> dict[str, dict[str, Any]]:
    """Nested lists, as `meta/stats.json` stores them."""
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def from_json(data: Mapping[str, Mapping[str, Any]]) -> dict[str, Stats]:
    return {f: {k: np.asarray(v) for k, v in s.items()} for f, s in data.items()}
