"""Closed-loop evaluation of a policy on the simulated UR5 (`python -m controller.evaluate`).

- `episodes.py`: one world per seeded episode, the controller run through the
  harness (invariants checked), virtual time by default; the policy loaded once;
- `report.py`: success with its Wilson 95 % interval, time to success, control
  rate held, feature age at use, per-episode rows;
- `seeds.py`: evaluation seeds apart from a training dataset's;
- `plot.py`: success against VL latency, sync and async (matplotlib, Agg);
- `video.py`: one episode as an MP4 with the instruction, feature age and outcome;
- `cli.py`: the command line.
"""

from __future__ import annotations

from controller.evaluate.report import EpisodeResult, summarize, wilson_interval

__all__ = ["EpisodeResult", "summarize", "wilson_interval"]
