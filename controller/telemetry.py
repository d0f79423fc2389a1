"""What the controller measured: the figures that say whether it held its rate.

The seed note reported "40 FPS" for the action path alone; what matters on an
arm is the control rate actually held, its jitter, and how old the features
and state behind each action were. Every figure here is recorded on the
controller clock (`controller.clock.controller_clock`: the virtual clock
under the harness, so it is exact there too; CLOCK_MONOTONIC read in
nanoseconds on real time, so sub-millisecond lateness is visible even under
uvloop, whose own clock counts whole milliseconds). Telemetry never reads a
clock itself: the runtime and the scheduler hand it differences of readings.

Two costs are shown beside the figures they buy: the precise wake's spin
(seconds per tick awake before a deadline, and the fraction of the run they
add up to) and the action hand-off (an action's latency minus the time the
policy's `act` itself took, i.e. what reaching the action lane cost).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np


class Series:
    """Samples of one quantity: exact count/min/max/mean, percentiles over the last `keep`.

    The recent samples live in a preallocated float64 ring, so a run of days
    holds the same memory as a run of minutes (a deque of Python floats grew
    by ~32 bytes a sample until it was full).
    """

    def __init__(self, keep: int = 100_000) -> None:
        self._ring = np.full(keep, np.nan)  # written now: the pages are resident from the start
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        self._ring[self.count % len(self._ring)] = value
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        return float(np.percentile(self._ring[: min(self.count, len(self._ring))], q))

    def summary(self, scale: float = 1.0) -> dict[str, float | int | None]:
        """count, mean, p50, p99, max (times `scale`: 1e3 turns seconds into ms)."""
        if not self.count:
            return {"count": 0, "mean": None, "p50": None, "p99": None, "max": None}
        p50, p99 = self.percentile(50), self.percentile(99)
        return {
            "count": self.count,
            "mean": round(self.total / self.count * scale, 3),
            "p50": round(p50 * scale, 3) if p50 is not None else None,
            "p99": round(p99 * scale, 3) if p99 is not None else None,
            "max": round(self.max * scale, 3),
        }


class ReuseCount:
    """How many actions each feature version served, in constant memory.

    The controller always uses the newest version, so once a newer one is
    used the older one is done: its count goes into a histogram and is
    forgotten (a Counter keyed by version grew by one entry per encode).
    """

    def __init__(self) -> None:
        self.version: int | None = None
        self.current = 0
        self.histogram: Counter[int] = Counter()

    def used(self, version: int) -> int:
        if version != self.version:
            if self.version is not None:
                self.histogram[self.current] += 1
            self.version, self.current = version, 0
        self.current += 1
        return self.current

    def counts(self) -> Counter[int]:
        """Histogram of actions per version, the version in use included."""
        out = Counter(self.histogram)
        if self.version is not None:
            out[self.current] += 1
        return out


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One action sent to the arm and where its inputs came from."""

    tick: int
    time: float
    seq: int
    feature_version: int
    feature_age: float
    state_age: float
    reuse: int  # 1 for the first action computed from this feature version
    latency: float
    clamped: bool
    #: Seconds the policy's `act` itself took (NaN when unknown); `latency - compute`
    #: is what handing it over to the action lane and back cost.
    compute: float = math.nan
    #: Whether `act` ran inline on the event loop rather than on the action lane.
    inline: bool = False


class Telemetry:
    def __init__(
        self, period: float, *, on_time_tolerance: float | None = None, keep_actions: int = 10_000
    ) -> None:
        self.period = period
        #: A tick is "on time" when it starts within this of its deadline (default 10 % of the period).
        self.on_time_tolerance = (
            on_time_tolerance if on_time_tolerance is not None else 0.1 * period
        )
        self.lateness = Series()
        self.work = Series()
        self.wake_spin = Series()
        self.spin_total = 0.0
        #: The control path threads' scheduling (`controller.realtime.RealtimeGrant.as_dict`),
        #: once ticking started.
        self.realtime: dict[str, Any] | None = None
        self.action_latency = Series()
        self.act_compute = Series()
        self.action_handoff = Series()
        self.actions_inline = 0
        self.action_path_switches: Counter[str] = Counter()
        self.vl_latency = Series()
        self.vl_frame_age = Series()
        self.feature_age = Series()
        self.state_age = Series()
        self.ticks = 0
        self.ticks_on_time = 0
        self.missed = 0
        self.actions_sent = 0
        self.clamped = 0
        self.holds: Counter[str] = Counter()
        self.hold_episodes = 0
        self.errors: Counter[str] = Counter()
        self.vl_encodes = 0
        self.reuse = ReuseCount()
        self.actions: deque[ActionRecord] = deque(maxlen=keep_actions)
        self.started: float | None = None
        self.ended: float | None = None

    # -- recording ---------------------------------------------------------
    def tick(self, lateness: float, spin: float = 0.0) -> None:
        """A tick started `lateness` s after its deadline, after `spin` s of precise waiting."""
        self.ticks += 1
        self.lateness.add(lateness)
        self.wake_spin.add(spin)
        self.spin_total += spin
        if lateness <= self.on_time_tolerance:
            self.ticks_on_time += 1

    def tick_done(self, work: float) -> None:
        self.work.add(work)

    def missed_ticks(self, n: int) -> None:
        self.missed += n

    def hold(self, reason: str, *, new_episode: bool) -> None:
        self.holds[reason] += 1
        if new_episode:
            self.hold_episodes += 1

    def action_path(self, inline: bool) -> None:
        """The policy's `act` moved inline (True) or back to the action lane (False)."""
        self.action_path_switches["to_inline" if inline else "to_lane"] += 1

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def vl_encoded(self, latency: float, frame_age: float) -> None:
        self.vl_encodes += 1
        self.vl_latency.add(latency)
        if math.isfinite(frame_age):  # a frame with a broken clock has no age to report
            self.vl_frame_age.add(frame_age)

    def action(self, record: ActionRecord) -> None:
        self.actions_sent += 1
        self.clamped += record.clamped
        self.action_latency.add(record.latency)
        if math.isfinite(record.compute):
            self.act_compute.add(record.compute)
            self.action_handoff.add(max(0.0, record.latency - record.compute))
        self.actions_inline += record.inline
        self.feature_age.add(record.feature_age)
        self.state_age.add(record.state_age)
        self.actions.append(record)

    def feature_used(self, version: int) -> int:
        """Count one more use of a feature version; returns its reuse index (1-based)."""
        return self.reuse.used(version)

    # -- reporting ---------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        duration = (self.ended or 0.0) - (self.started or 0.0) if self.started is not None else 0.0
        expected = self.ticks + self.missed
        histogram = self.reuse.counts()
        versions = sum(histogram.values())
        return {
            "duration_s": round(duration, 3),
            "hz_target": round(1.0 / self.period, 3),
            "control_rate_hz": round(self.actions_sent / duration, 3) if duration > 0 else None,
            "tick_rate_hz": round(self.ticks / duration, 3) if duration > 0 else None,
            "ticks": self.ticks,
            "ticks_on_time": self.ticks_on_time,
            "on_time_fraction": round(self.ticks_on_time / expected, 4) if expected else None,
            "on_time_tolerance_ms": round(self.on_time_tolerance * 1e3, 3),
            "missed_ticks": self.missed,
            "tick_lateness_ms": self.lateness.summary(1e3),
            "tick_work_ms": self.work.summary(1e3),
            "wake_spin_ms": self.wake_spin.summary(1e3),
            "wake_spin_cpu_fraction": round(self.spin_total / duration, 4)
            if duration > 0
            else None,
            "realtime": self.realtime,
            "actions_sent": self.actions_sent,
            "actions_clamped": self.clamped,
            "action_latency_ms": self.action_latency.summary(1e3),
            "act_compute_ms": self.act_compute.summary(1e3),
            "action_handoff_ms": self.action_handoff.summary(1e3),
            "actions_inline": self.actions_inline,
            "action_path_switches": dict(self.action_path_switches),
            "vl_encodes": self.vl_encodes,
            "vl_latency_ms": self.vl_latency.summary(1e3),
            "vl_frame_age_at_encode_ms": self.vl_frame_age.summary(1e3),
            "feature_age_at_use_ms": self.feature_age.summary(1e3),
            "state_age_at_use_ms": self.state_age.summary(1e3),
            "reuse": {
                "feature_versions_used": versions,
                "mean": round(self.actions_sent / versions, 3) if versions else None,
                "max": max(histogram) if versions else None,
                "histogram": {str(k): v for k, v in sorted(histogram.items())},
            },
            "holds": dict(self.holds),
            "hold_ticks": sum(self.holds.values()),
            "hold_episodes": self.hold_episodes,
            "errors": dict(self.errors),
        }

    def status_line(self) -> str:
        def ms(series: Series, q: float) -> str:
            v = series.percentile(q)
            return "-" if v is None else f"{v * 1e3:.1f}"

        return (
            f"ticks={self.ticks} missed={self.missed} sent={self.actions_sent}"
            f" holds={sum(self.holds.values())}"
            f" late_p99={ms(self.lateness, 99)}ms act_p50={ms(self.action_latency, 50)}ms"
            f" vl_p50={ms(self.vl_latency, 50)}ms feat_age_p50={ms(self.feature_age, 50)}ms"
            f" reuse={self.actions_sent / max(1, sum(self.reuse.counts().values())):.2f}"
        )


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable block printed at exit."""

    def s(d: dict[str, Any]) -> str:
        if not d.get("count"):
            return "n/a"
        return f"p50 {d['p50']} / p99 {d['p99']} / max {d['max']} ms (n={d['count']})"

    r = summary["reuse"]
    realtime = summary.get("realtime") or {}
    lines = [
        "── controller summary ──",
        f"duration            {summary['duration_s']} s at target {summary['hz_target']} Hz",
        f"control rate held   {summary['control_rate_hz']} Hz actions, {summary['tick_rate_hz']} Hz ticks",
        f"ticks on time       {summary['ticks_on_time']}/{summary['ticks'] + summary['missed_ticks']}"
        f" (within {summary['on_time_tolerance_ms']} ms), missed {summary['missed_ticks']}",
        f"tick lateness       {s(summary['tick_lateness_ms'])}",
        f"action latency      {s(summary['action_latency_ms'])}",
        f"  act itself        {s(summary['act_compute_ms'])}",
        f"  hand-off          {s(summary['action_handoff_ms'])}",
        f"  inline            {summary['actions_inline']} of {summary['actions_sent']} actions"
        f" {summary['action_path_switches'] or ''}",
        f"wake spin           {s(summary['wake_spin_ms'])}"
        f" ({summary['wake_spin_cpu_fraction']} of the run)",
        *([f"real-time           {realtime['detail']}"] if realtime.get("requested") else []),
        f"VL latency          {s(summary['vl_latency_ms'])}  ({summary['vl_encodes']} encodes)",
        f"feature age at use  {s(summary['feature_age_at_use_ms'])}",
        f"state age at use    {s(summary['state_age_at_use_ms'])}",
        f"feature reuse       mean {r['mean']} max {r['max']} over {r['feature_versions_used']} versions",
        f"actions sent        {summary['actions_sent']} ({summary['actions_clamped']} clamped)",
        f"holds               {summary['hold_ticks']} ticks in {summary['hold_episodes']} episodes {summary['holds'] or ''}",
    ]
    if summary["errors"]:
        lines.append(f"errors              {summary['errors']}")
    return "\n".join(lines)
