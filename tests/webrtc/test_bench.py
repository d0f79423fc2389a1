"""The benchmark runs end to end and reports sane figures (not a speed test)."""

from __future__ import annotations

import pytest

from controller.camera_bench import run


@pytest.mark.peer  # the sender is a process of its own; real time is what is measured
async def test_bench_reports_latency_and_cpu() -> None:
    result = await run(seconds=1.5, fps=30, warmup=0.25)
    assert result["frames"] > 20
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"] < 1000
    assert result["cpu_ms_per_frame"] > 0
