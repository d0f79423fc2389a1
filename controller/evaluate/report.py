"""What an evaluation reports: success with its 95 % interval, time to success, rate held, ages.

Kept apart from running episodes so that the figures are computed in one
place, from the per-episode rows the JSON also carries (anyone can recompute
a cell's summary from its rows).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: The normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default).

    Chosen over the normal ("Wald") interval because evaluations have few
    episodes and rates near 0 or 1, where Wald collapses to a zero-width
    interval (10/10 would claim certainty); Wilson stays inside [0, 1] and
    keeps its coverage. With no episodes nothing is known: (0, 1).
    """
    if not (isinstance(n, int) and isinstance(successes, int) and 0 <= successes <= n):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    """One closed-loop episode: how it ended, and how the controller held up during it."""

    index: int
    seed: int
    task: str
    target: str
    instruction: str
    success: bool
    #: World time (s since the world started, warm-up included) of the first touch.
    time_to_success_s: float | None
    #: Closest the tool point came to the named cube's top face (m).
    min_distance_m: float
    #: World time simulated (s).
    elapsed_s: float
    #: Control time (s, from ACTIVE to the stop) and what happened in it.
    control_s: float
    ticks: int
    actions: int
    missed_ticks: int
    overruns: int
    holds: dict[str, int]
    vl_encodes: int
    vl_latency_ms_p50: float | None
    feature_age_ms_p50: float | None
    feature_age_ms_p95: float | None
    #: Real seconds the episode took on this machine.
    wall_s: float
    #: Feature age of every action (ms): pooled into the cell's percentiles, not in the JSON.
    feature_ages_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def control_rate_hz(self) -> float | None:
        return self.actions / self.control_s if self.control_s > 0 else None

    def row(self) -> dict[str, Any]:
        """The episode as a JSON row (without the per-action ages)."""
        out = asdict(self)
        out.pop("feature_ages_ms")
        out["control_rate_hz"] = _round(self.control_rate_hz, 3)
        for key in ("time_to_success_s", "elapsed_s", "control_s", "wall_s"):
            out[key] = _round(out[key], 4)
        out["min_distance_m"] = _round(self.min_distance_m, 5)
        return out


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """A cell's figures: success rate and its Wilson 95 % interval, time to success
    (median, p90, over the successful episodes), the control rate held (all actions
    over all control time), ticks missed and overruns, feature age at use (p50/p95
    over every action of every episode), holds by reason, and wall time."""
    n = len(results)
    wins = sum(r.success for r in results)
    lo, hi = wilson_interval(wins, n)
    times = [r.time_to_success_s for r in results if r.time_to_success_s is not None]
    ages = [a for r in results for a in r.feature_ages_ms]
    control = sum(r.control_s for r in results)
    actions = sum(r.actions for r in results)
    holds: Counter[str] = Counter()
    for r in results:
        holds.update(r.holds)
    wall = sum(r.wall_s for r in results)
    return {
        "episodes": n,
        "successes": wins,
        "success_rate": _round(wins / n if n else None, 4),
        "success_ci95": [round(lo, 4), round(hi, 4)],
        "time_to_success_s": {
            "median": _round(_percentile(times, 50), 3),
            "p90": _round(_percentile(times, 90), 3),
            "count": len(times),
        },
        "control_rate_hz": _round(actions / control if control > 0 else None, 3),
        "actions": actions,
        "ticks": sum(r.ticks for r in results),
        "missed_ticks": sum(r.missed_ticks for r in results),
        "overruns": sum(r.overruns for r in results),
        "feature_age_at_use_ms": {
            "p50": _round(_percentile(ages, 50), 1),
            "p95": _round(_percentile(ages, 95), 1),
            "count": len(ages),
        },
        "holds": dict(sorted(holds.items())),
        "vl_encodes": sum(r.vl_encodes for r in results),
        "wall_s": round(wall, 2),
        "wall_s_per_episode": round(wall / n, 3) if n else None,
    }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} ms"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def one_line(task: str, vl_mode: str, vl_latency: float, summary: dict[str, Any]) -> str:
    """The cell as one line: what a terminal shows after the progress bar."""
    lo, hi = summary["success_ci95"]
    rate = summary["success_rate"]
    tts = summary["time_to_success_s"]
    age = summary["feature_age_at_use_ms"]
    hz = summary["control_rate_hz"]
    return (
        f"{task} {vl_mode} VL {vl_latency:g} s: {summary['successes']}/{summary['episodes']}"
        f" succeeded ({(rate or 0) * 100:.1f} %, 95 % CI {lo * 100:.1f}-{hi * 100:.1f} %);"
        f" time to success median {_s(tts['median'])}, p90 {_s(tts['p90'])};"
        f" {'-' if hz is None else f'{hz:.2f}'} actions/s, {summary['overruns']} overruns,"
        f" {summary['missed_ticks']} ticks missed; feature age p50 {_ms(age['p50'])},"
        f" p95 {_ms(age['p95'])}; {summary['wall_s_per_episode']} s wall per episode"
    )
