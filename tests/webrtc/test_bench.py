"""`python -m controller.bench camera` runs end to end and reports sane figures (not a speed test)."""

from __future__ import annotations

import json

import pytest

from controller.bench.__main__ import main


@pytest.mark.peer  # the sender is a process of its own; real time is what is measured
def test_bench_reports_latency_and_cpu(tmp_path, capsys) -> None:
    out = tmp_path / "camera.json"
    argv = ["camera", "--seconds", "1.5", "--fps", "30", "--warmup", "0.25", "--json", str(out)]
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "| frames | fps |" in stdout and "camera [" in stderr
    doc = json.loads(out.read_text())
    assert doc["bench"] == "camera" and doc["machine"]["cores"] >= 1
    (result,) = doc["rows"]
    assert result["frames"] > 20
    assert (
        0 < result["latency_ms_p50"] <= result["latency_ms_p99"] <= result["latency_ms_max"] < 1000
    )
    assert result["cpu_ms_per_frame"] > 0
