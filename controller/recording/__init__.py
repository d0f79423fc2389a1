"""Recording runs as LeRobot v3 datasets: `--record DIR`, and the episodes `controller.collect` writes.

- `recorder.py`: `Recorder` (start_episode / record / end_episode, a bounded
  queue to a writer thread; the control loop never waits on it), `feed`
  (a controller's commands into the open episode) and `attach` (a CLI run
  as one episode);
- `lerobot_v3.py`: the format on disk and the atomic commit of an episode;
- `video.py`: H.264 segments through PyAV, and appending them to a file;
- `stats.py`: the per-feature statistics the format carries.
"""

from __future__ import annotations

from controller.recording.lerobot_v3 import (
    DatasetDirError,
    DatasetMismatch,
    LeRobotV3Writer,
    camera_key,
)
from controller.recording.recorder import Recorder, RecordingError, attach, feed, sensor_names

__all__ = [
    "DatasetDirError",
    "DatasetMismatch",
    "LeRobotV3Writer",
    "Recorder",
    "RecordingError",
    "attach",
    "camera_key",
    "feed",
    "sensor_names",
]
