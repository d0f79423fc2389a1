"""The shipped demo checkpoint (`examples/reach/checkpoint/`) closes the loop: issue 10's CI goal.

20 `reach` episodes on the virtual clock, asynchronous VL encoding padded to
0.3 s (a 3B model's latency on a robot PC), evaluation seeds from 1,000,000:
disjoint from the training seeds (1000-7198, `examples/reach/recipe.sh`).
The goal is at least 80 % success (the closing sweep measures 50 episodes a
cell). About 25 s on 2 cores: it runs in CI, so a change that breaks the
closed loop (the policy, the VL lane, the sim, the safety filter) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.evaluate.cli import main

pytestmark = pytest.mark.slow

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
