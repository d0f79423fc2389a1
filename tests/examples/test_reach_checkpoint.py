"""The shipped demo checkpoint (`examples/reach/checkpoint/`) closes the loop: issue 10's CI goal.

20 `reach` episodes on the virtual clock, asynchronous VL encoding padded to
0.3 s (a 3B model's latency on a robot PC), evaluation seeds from 1,000,000:
disjoint from the training seeds (1000-1399 and 2000-3376, `examples/reach/README.md`).
The goal is at least 80 % success; it is not weakened to what a checkpoint
happens to reach. Run it with `pytest --demo` (about 2 minutes on 2 cores);
without `--demo` it is reported as skipped, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.evaluate.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.demo]

CHECKPOINT = Path(__file__).resolve().parents[2] / "examples" / "reach" / "checkpoint"
EPISODES = 20
GOAL = 0.8


def test_the_shipped_checkpoint_touches_the_named_cube(capsys, tmp_path):
    assert (CHECKPOINT / "config.json").is_file(), f"no checkpoint at {CHECKPOINT}"
    out = tmp_path / "eval.json"
    code = main(
        [
            "--checkpoint",
            str(CHECKPOINT),
            "--task",
            "reach",
            "--episodes",
            str(EPISODES),
            "--vl-mode",
            "async",
            "--vl-latency",
            "0.3",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out.read_text())
    rows = report["episodes"]
    assert len(rows) == EPISODES
    assert min(r["seed"] for r in rows) >= 1_000_000  # never a training seed
    successes = sum(bool(r["success"]) for r in rows)
    misses = [(r["seed"], r.get("min_distance_m")) for r in rows if not r["success"]]
    assert successes >= GOAL * EPISODES, f"{successes}/{EPISODES} successes; missed {misses}"
