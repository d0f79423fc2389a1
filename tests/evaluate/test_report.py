"""The evaluation's figures: the Wilson interval and a cell's summary from its episode rows."""

from __future__ import annotations

import math

import pytest

from controller.evaluate.report import EpisodeResult, one_line, summarize, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        # Reference values (Wilson 1927; e.g. Newcombe 1998, table I, and R's binom.confint).
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_reference_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_contains_the_rate_and_narrows_with_more_episodes():
    widths = []
    for n in (10, 50, 200):
        lo, hi = wilson_interval(int(0.9 * n), n)
        assert 0.0 <= lo < 0.9 < hi <= 1.0
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _result(
    i: int, success: bool, tts: float | None, ages: tuple[float, ...], **kw
) -> EpisodeResult:
    base = dict(
        index=i,
        seed=100 + i,
        task="reach",
        target="red",
        instruction="touch the red cube",
        success=success,
        time_to_success_s=tts,
        min_distance_m=0.01 if success else 0.2,
        elapsed_s=5.0,
        control_s=4.0,
        ticks=40,
        actions=len(ages),
        missed_ticks=0,
        overruns=0,
        holds={},
        vl_encodes=40,
        vl_latency_ms_p50=300.0,
        feature_age_ms_p50=None,
        feature_age_ms_p95=None,
        wall_s=1.0,
        feature_ages_ms=ages,
    )
    base.update(kw)
    return EpisodeResult(**base)  # type: ignore[arg-type]


def test_summary_pools_episodes():
    results = [
        _result(0, True, 2.0, (100.0,) * 20, holds={"features_stale": 2}),
        _result(1, True, 4.0, (300.0,) * 20, overruns=3, missed_ticks=6),
        _result(2, False, None, (200.0,) * 40, holds={"features_stale": 1, "vl_error": 1}),
    ]
    s = summarize(results)
    assert s["episodes"] == 3 and s["successes"] == 2
    assert s["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["success_ci95"] == pytest.approx(list(wilson_interval(2, 3)), abs=1e-4)
    # Time to success over the successful episodes only.
    assert s["time_to_success_s"]["median"] == 3.0
    assert s["time_to_success_s"]["p90"] == pytest.approx(3.8)
    # Rate: all actions over all control time (80 actions in 12 s).
    assert s["control_rate_hz"] == pytest.approx(80 / 12, abs=1e-3)
    assert s["overruns"] == 3 and s["missed_ticks"] == 6
    # Feature age: percentiles over every action, not a mean of per-episode figures.
    assert s["feature_age_at_use_ms"] == {"p50": 200.0, "p95": 300.0, "count": 80}
    assert s["holds"] == {"features_stale": 3, "vl_error": 1}
    line = one_line("reach", "sync", 0.3, s)
    assert "\n" not in line and "2/3 succeeded" in line and "95 % CI" in line


def test_a_row_is_json_ready_and_leaves_the_per_action_ages_out():
    row = _result(0, False, None, (1.0, 2.0)).row()
    assert "feature_ages_ms" not in row
    assert row["control_rate_hz"] == 0.5 and row["time_to_success_s"] is None
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in row.values())


def test_no_success_reports_no_time_to_success():
    s = summarize([_result(0, False, None, ())])
    assert s["time_to_success_s"] == {"median": None, "p90": None, "count": 0}
    assert s["feature_age_at_use_ms"]["p50"] is None
    assert "median -" in one_line("reach", "async", 0.0, s)
