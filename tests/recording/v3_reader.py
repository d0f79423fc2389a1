"""An independent reader of LeRobot's dataset format v3.0, for the tests (pyarrow and PyAV only).

Written from the published layout, not from our writer: paths, column
names and the timestamp convention are spelled out here as LeRobot's
`LeRobotDataset` reads them, so a writer that drifted from the format fails
these tests instead of agreeing with itself.

- `meta/info.json`: `codebase_version` "v3.0", `fps`, `features`, totals,
  `data_path` / `video_path` templates;
- `meta/episodes/chunk-*/file-*.parquet`: one row per episode with
  `dataset_from_index`/`dataset_to_index` (global row range),
  `data/chunk_index`/`data/file_index`, and per video key
  `videos/<key>/chunk_index`, `file_index`, `from_timestamp`, `to_timestamp`;
- `meta/tasks.parquet`: `task_index`, indexed (pandas metadata) by task text;
- `data/...parquet`: rows; frame k of an episode is at
  `from_timestamp + timestamp` in its video file, within 1e-4 s;
- `observation.environment_state` (optional): LeRobot's privileged state of
  the environment, a float32 vector per row, its length and value names in
  `info.json`'s features; columns of the episodes table that the format does
  not define (a world `seed`) are the dataset's own and read as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOLERANCE_S = 1e-4  # LeRobotDataset's default tolerance between a timestamp and a frame
ENV_KEY = "observation.environment_state"


@dataclass
class V3Dataset:
    root: Path
    info: dict[str, Any]
    tasks: dict[int, str]
    episodes: list[dict[str, Any]]
    stats: dict[str, dict[str, np.ndarray]]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.info["features"].items() if f["dtype"] == "video"]

    def rows(self, episode: int) -> pa.Table:
        """The episode's rows, from the data file its metadata names."""
        ep = self.episodes[episode]
        path = self.root / self.info["data_path"].format(
            chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"]
        )
        table = pq.read_table(path)
        index = table["index"].to_numpy()
        keep = (index >= ep["dataset_from_index"]) & (index < ep["dataset_to_index"])
        return table.filter(pa.array(keep))

    def environment_state(self, episode: int) -> np.ndarray | None:
        """The episode's `observation.environment_state`, `(frames, n)` float32, checked against
        its feature in `info.json`; None when the dataset has no such feature."""
        feature = self.info["features"].get(ENV_KEY)
        if feature is None:
            return None
        assert feature["dtype"] == "float32", feature
        (size,) = feature["shape"]
        assert feature["names"] is None or len(feature["names"]) == size, feature
        column = self.rows(episode)[ENV_KEY]
        assert column.type.value_type == pa.float32(), column.type
        values = np.array(column.to_pylist(), dtype=np.float32)
        assert values.shape == (self.episodes[episode]["length"], size), values.shape
        return values

    def all_rows(self) -> pa.Table:
        """Every data file in path order, as LeRobot loads them (it indexes rows by position)."""
        files = sorted((self.root / "data").glob("*/*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files])

    def video_path(self, key: str, episode: int) -> Path:
        ep = self.episodes[episode]
        return self.root / self.info["video_path"].format(
            video_key=key,
            chunk_index=ep[f"videos/{key}/chunk_index"],
            file_index=ep[f"videos/{key}/file_index"],
        )

    def frames(self, key: str, episode: int) -> list[np.ndarray]:
        """The episode's video frames, found the way LeRobot finds them: by timestamp."""
        ep = self.episodes[episode]
        start = ep[f"videos/{key}/from_timestamp"]
        wanted = [start + float(t) for t in self.rows(episode)["timestamp"].to_pylist()]
        decoded = decode(self.video_path(key, episode))
        times = np.array([t for t, _ in decoded])
        out = []
        for t in wanted:
            i = int(np.argmin(np.abs(times - t)))
            assert abs(times[i] - t) < TOLERANCE_S, f"no frame of {key} within 0.1 ms of {t} s"
            out.append(decoded[i][1])
        return out


def decode(path: Path) -> list[tuple[float, np.ndarray]]:
    """(presentation time in s, RGB frame) of every frame of an MP4."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tb = Fraction(stream.time_base)
        return [(float(f.pts * tb), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]


def load(root: Path) -> V3Dataset:
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    rows = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    episodes = sorted(rows.to_pylist(), key=lambda e: e["episode_index"])
    tasks_table = pq.read_table(root / "meta" / "tasks.parquet")
    pandas = json.loads(tasks_table.schema.metadata[b"pandas"])
    (index_column,) = pandas["index_columns"]
    tasks = dict(
        zip(
            tasks_table["task_index"].to_pylist(),
            tasks_table[index_column].to_pylist(),
            strict=True,
        )
    )
    stats_raw = json.loads((root / "meta" / "stats.json").read_text())
    stats = {f: {k: np.asarray(v) for k, v in s.items()} for f, s in stats_raw.items()}
    return V3Dataset(root, info, tasks, episodes, stats)
