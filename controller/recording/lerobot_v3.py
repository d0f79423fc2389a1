"""LeRobot's dataset format v3.0 on disk: a directory that LeRobot's `LeRobotDataset` reads.

```
meta/info.json                                  fps, features, totals, path templates
meta/stats.json                                 per-feature statistics (controller.recording.stats)
meta/tasks.parquet                              task text -> task_index
meta/episodes/chunk-000/file-000.parquet        one row per episode: length, task, where its
                                                rows and video frames are, its statistics
data/chunk-000/file-000.parquet                 one row per frame: observation.state, action,
                                                (observation.environment_state), timestamp,
                                                frame_index, episode_index, index, task_index
videos/<feature key>/chunk-000/file-000.mp4     one file per camera, episodes back to back
```

`observation.environment_state` is LeRobot's name for privileged state of
the environment: here the readings of the run's sensors, concatenated (for
the simulated world, every cube's pose, the target and the conveyor speed).
It is written only when the run has sensors, and is meant as a training
target (an auxiliary loss), not as a policy input. Episodes may carry
columns of their own in the episodes table (`seed`: the world seed of a
simulated episode), which LeRobot keeps and ignores.

Several episodes share a file until it passes its size limit (LeRobot's:
100 MB of rows, 200 MB of video), then the next file index is used.

Each episode is committed whole, and the previous state stays readable at
every moment: the new version of every file it touches is written beside the
old one (`*.partial`, which no reader globs), flushed to disk, then renamed
over it, meta last: videos, rows, tasks, the episodes table, stats,
`info.json`. The episodes table is the commit: a crash before its rename
leaves rows or video frames past the last episode that nothing refers to
(LeRobot indexes rows by position, and they are at the end), and the next
commit to that file drops them. Nothing here ever removes a file it did not
write: a directory that is neither empty nor a dataset is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from controller.errors import ConfigError
from controller.recording import stats as stats_mod
from controller.recording import video

log = logging.getLogger("controller.recording")

CODEBASE_VERSION = "v3.0"
#: LeRobot's defaults: files per chunk directory, and the size at which a file is closed.
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
#: Ours: a file is also closed at this many frames. Appending an episode rewrites its file
#: (an MP4 is only readable once finished, and a finished file is what an interruption must
#: leave), so without a cap every commit copies the whole recording so far: small frames stay
#: far under the size limit, and a 2000-episode collection spent 0.5 s per episode copying.
FILE_MAX_FRAMES = 3000

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
#: Our own scratch space inside the dataset (episode video segments being encoded).
STAGING = ".recording"
PARTIAL = ".partial"
#: Everything a dataset directory written by us may hold.
_LAYOUT = {"meta", "data", "videos", STAGING, "README.md", ".gitattributes"}

STATE_KEY = "observation.state"
ACTION_KEY = "action"
#: LeRobot's feature name for privileged state of the environment (here: sensor readings).
ENV_KEY = "observation.environment_state"
IMAGE_PREFIX = "observation.images."
#: The columns LeRobot adds to every dataset, in its order.
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


class DatasetDirError(ConfigError):
    """`--record DIR` names a directory that cannot hold a dataset (the message says why)."""


class DatasetMismatch(ValueError):
    """This run's features (cameras, joints, rate) differ from those of the dataset it appends to."""


def camera_key(name: str) -> str:
    """The dataset feature a camera's frames are stored under (`observation.images.front`)."""
    return IMAGE_PREFIX + re.sub(r"[^A-Za-z0-9_\-]", "_", name)


@dataclass(frozen=True, slots=True)
class CameraSpec:
    key: str
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What every episode of a dataset records: its rate, joints and camera images."""

    fps: int
    robot_type: str
    joint_names: tuple[str, ...]
    cameras: tuple[CameraSpec, ...]
    #: A name per value of `observation.environment_state`; empty: the feature is not recorded.
    environment_names: tuple[str, ...] = ()

    def features(self) -> dict[str, dict[str, Any]]:
        """`info.json`'s features, without the per-video `info` blocks."""
        names = list(self.joint_names)
        out: dict[str, dict[str, Any]] = {
            STATE_KEY: {"dtype": "float32", "shape": [len(names)], "names": names},
            ACTION_KEY: {"dtype": "float32", "shape": [len(names)], "names": names},
        }
        if self.environment_names:
            env = list(self.environment_names)
            out[ENV_KEY] = {"dtype": "float32", "shape": [len(env)], "names": env}
        for cam in self.cameras:
            out[cam.key] = {
                "dtype": "video",
                "shape": [cam.height, cam.width, 3],
                "names": ["height", "width", "channels"],
            }
        out.update({k: dict(v) for k, v in INDEX_FEATURES.items()})
        return out

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> DatasetSpec:
        feats = info["features"]
        state = feats.get(STATE_KEY, {})
        cams = tuple(
            CameraSpec(k, int(f["shape"][0]), int(f["shape"][1]))
            for k, f in feats.items()
            if f.get("dtype") == "video"
        )
        env = feats.get(ENV_KEY)
        env_names: tuple[str, ...] = ()
        if env is not None:
            size = int(env["shape"][0])
            env_names = tuple(env.get("names") or (f"value_{i}" for i in range(size)))
        return cls(
            fps=int(info["fps"]),
            robot_type=str(info.get("robot_type") or "unknown"),
            joint_names=tuple(state.get("names") or ()),
            cameras=cams,
            environment_names=env_names,
        )


@dataclass(slots=True)
class EpisodeData:
    """One finished episode, ready to commit: its rows, and one encoded video segment per camera."""

    task: str
    states: np.ndarray
    actions: np.ndarray
    videos: dict[str, Path]
    image_stats: dict[str, stats_mod.Stats]
    success: bool | None = None
    #: Steps the recorder could not keep (its queue was full): missing between rows.
    dropped: int = 0
    #: `observation.environment_state` rows, `(length, n)`; None when the dataset has none.
    environment: np.ndarray | None = None
    #: The episode's own columns in the episodes table (`seed`, ...): see `episode_columns`.
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.states)


@dataclass(frozen=True, slots=True)
class SavedEpisode:
    index: int
    length: int
    task_index: int
    data_file: Path
    video_files: dict[str, Path] = field(default_factory=dict)


class LeRobotV3Writer:
    """Appends episodes to a LeRobot v3.0 dataset directory; one commit per episode."""

    def __init__(self, root: Path, fps: int) -> None:
        self.root = root
        self.fps = fps
        self.info: dict[str, Any] | None = None
        self.tasks: dict[str, int] = {}
        self.stats: dict[str, stats_mod.Stats] | None = None
        #: The last episodes file and the last episode's row (where the next one goes).
        self._episodes_file: tuple[int, int] = (0, 0)
        self._episodes_table: pa.Table | None = None
        self._last: dict[str, Any] | None = None
        #: Whether `open` made the directory (then a run that saved nothing removes it).
        self._created = False

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        fps: int,
        camera_keys: Sequence[str] = (),
        environment: bool | None = None,
        label: str = "--record",
    ) -> LeRobotV3Writer:
        """Check `root` (new, empty, or a v3.0 dataset to append to) and make it ready.

        Raises `DatasetDirError` with one line when the directory is a file,
        not empty and not a dataset, a dataset of another version, rate or
        cameras, or cannot be written. Nothing is written before these checks.
        `environment` (when not None) says whether this run records
        `observation.environment_state`; a dataset that differs is refused.
        `label` is how messages name the directory (the flag that gave it).
        """
        path = Path(root).expanduser()
        where = f"{label} {str(root)!r}"
        if path.exists() and not path.is_dir():
            raise DatasetDirError(f"{where} exists and is not a directory")
        info_file = path / INFO_PATH
        if path.is_dir() and not info_file.is_file():
            try:
                entries = {p.name for p in path.iterdir()}
            except OSError as exc:
                raise DatasetDirError(f"{where} cannot be read: {exc.strerror}") from None
            ours = STAGING in entries and entries <= _LAYOUT
            if entries and not ours:
                raise DatasetDirError(
                    f"{where} is not empty and holds no LeRobot dataset (no {INFO_PATH}):"
                    " name a new or empty directory (nothing there was touched)"
                )
        writer = cls(path, fps)
        writer._created = not path.exists()
        if info_file.is_file():
            writer._load(where)  # read only: a dataset we cannot take is left untouched
            try:
                writer.check_cameras(camera_keys)
                if environment is not None:
                    writer.check_environment(environment)
            except DatasetMismatch as exc:
                raise DatasetDirError(f"{where}: {exc}") from None
        try:
            (path / STAGING).mkdir(parents=True, exist_ok=True)
            probe = path / STAGING / f"probe{PARTIAL}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DatasetDirError(f"{where} cannot be written: {exc.strerror}") from None
        writer._remove_partials()
        return writer

    def _load(self, where: str) -> None:
        try:
            info = json.loads((self.root / INFO_PATH).read_text())
            version = info.get("codebase_version")
            if version != CODEBASE_VERSION:
                raise DatasetDirError(
                    f"{where} holds a LeRobot dataset of version {version!r}; only"
                    f" {CODEBASE_VERSION} can be appended to"
                )
            if int(info["fps"]) != self.fps:
                raise DatasetDirError(
                    f"{where} holds a dataset recorded at {info['fps']} fps; this run's control"
                    f" rate is {self.fps} Hz (use the dataset's rate or another directory)"
                )
            episode_files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
            if episode_files:
                table = pq.read_table(episode_files[-1])
                if table.num_rows:
                    self._episodes_table = table
                    self._last = table.slice(table.num_rows - 1).to_pylist()[0]
                    self._episodes_file = (
                        int(self._last["meta/episodes/chunk_index"]),
                        int(self._last["meta/episodes/file_index"]),
                    )
            if (self.root / TASKS_PATH).is_file():
                tasks = pq.read_table(self.root / TASKS_PATH).to_pydict()
                text = tasks.get("task") or tasks.get("__index_level_0__") or []
                self.tasks = {
                    str(t): int(i) for t, i in zip(text, tasks["task_index"], strict=True)
                }
            if (self.root / STATS_PATH).is_file():
                self.stats = stats_mod.from_json(json.loads((self.root / STATS_PATH).read_text()))
        except DatasetDirError:
            raise
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
            raise DatasetDirError(
                f"{where} holds a dataset that cannot be read ({type(exc).__name__}: {exc})"
            ) from None
        # The episodes table is the truth: info.json may lag it by one commit cut short.
        info["total_episodes"] = int(self._last["episode_index"]) + 1 if self._last else 0
        info["total_frames"] = int(self._last["dataset_to_index"]) if self._last else 0
        self.info = info

    def _remove_partials(self) -> None:
        """Files of ours that a commit cut short left behind (only our own `*.partial` names)."""
        for top in ("meta", "data", "videos", STAGING):
            base = self.root / top
            if base.is_dir():
                for p in base.rglob(f"*{PARTIAL}"):
                    p.unlink(missing_ok=True)
        for p in (self.root / STAGING).glob("*.mp4"):
            p.unlink(missing_ok=True)

    # -- what the dataset holds ---------------------------------------------
    @property
    def spec(self) -> DatasetSpec | None:
        """The dataset's spec, once it has one (an existing dataset, or after the first commit)."""
        return DatasetSpec.from_info(self.info) if self.info is not None else None

    @property
    def total_episodes(self) -> int:
        return int(self.info["total_episodes"]) if self.info else 0

    @property
    def total_frames(self) -> int:
        return int(self.info["total_frames"]) if self.info else 0

    @property
    def staging(self) -> Path:
        return self.root / STAGING

    def check_cameras(self, keys: Sequence[str]) -> None:
        """An existing dataset records exactly what a run records, with these cameras.

        A dataset with features of its own (a reward, another camera) is
        refused: appending rows without them would drop them from its files.
        """
        spec = self.spec
        if spec is None or self.info is None:
            return
        have = sorted(c.key for c in spec.cameras)
        if sorted(keys) != have:
            raise DatasetMismatch(
                f"the dataset at {str(self.root)!r} records cameras {have}; this run has"
                f" {sorted(keys)}"
            )
        theirs = {
            k: (f.get("dtype"), len(f.get("shape") or ())) for k, f in self.info["features"].items()
        }
        ours = {k: (f["dtype"], len(f["shape"])) for k, f in spec.features().items()}
        if theirs != ours:
            other = sorted(set(theirs) ^ set(ours)) or sorted(
                k for k in ours if theirs.get(k) != ours[k]
            )
            raise DatasetMismatch(
                f"the dataset at {str(self.root)!r} has features this recorder does not write"
                f" the same way ({', '.join(other)})"
            )

    def check_environment(self, recorded: bool) -> None:
        """An existing dataset has `observation.environment_state` exactly when this run records it."""
        spec = self.spec
        if spec is None:
            return
        has = bool(spec.environment_names)
        if has and not recorded:
            raise DatasetMismatch(
                f"the dataset at {str(self.root)!r} records {ENV_KEY} (sensor readings); this run"
                " has no sensors"
            )
        if recorded and not has:
            raise DatasetMismatch(
                f"the dataset at {str(self.root)!r} has no {ENV_KEY}; this run has sensors"
                " whose readings would be recorded there"
            )

    def settle(self, proposed: DatasetSpec) -> DatasetSpec:
        """The spec this run records with: the dataset's own if it has one (checked against ours)."""
        spec = self.spec
        if spec is None:
            return proposed
        self.check_cameras([c.key for c in proposed.cameras])
        if len(spec.joint_names) != len(proposed.joint_names):
            raise DatasetMismatch(
                f"the dataset at {str(self.root)!r} records {len(spec.joint_names)} joints;"
                f" this robot has {len(proposed.joint_names)}"
            )
        self.check_environment(bool(proposed.environment_names))
        if len(spec.environment_names) != len(proposed.environment_names):
            raise DatasetMismatch(
                f"the dataset at {str(self.root)!r} records {len(spec.environment_names)} values"
                f" of {ENV_KEY}; this run's sensors give {len(proposed.environment_names)}"
            )
        return spec

    # -- committing ---------------------------------------------------------
    def commit(self, ep: EpisodeData, spec: DatasetSpec) -> SavedEpisode:
        """Write one episode into the dataset, atomically at its end (see the module doc)."""
        n = ep.length
        if n == 0:
            raise ValueError("an episode needs at least one frame")
        index, first = self.total_episodes, self.total_frames
        task_index = self.tasks.get(ep.task, len(self.tasks))
        tasks = {**self.tasks, ep.task: task_index}
        staged: list[tuple[Path, Path]] = []  # (partial, target), in the order they are renamed
        try:
            rows = self._rows(ep, spec, index, first, task_index)
            ep_stats = self._episode_stats(rows, ep)
            row: dict[str, Any] = {}
            video_files: dict[str, Path] = {}
            for cam in spec.cameras:
                partial, video_files[cam.key] = self._stage_video(cam.key, ep, spec, row)
                staged.append((partial, video_files[cam.key]))
            partial, data_file = self._stage_rows(rows, first, row)
            staged.append((partial, data_file))
            if ep.task not in self.tasks:
                target = self.root / TASKS_PATH
                staged.append((_write_parquet(_tasks_table(tasks), target), target))
            row.update(episode_columns(ep.columns))
            row.update(
                {
                    "episode_index": index,
                    "tasks": [ep.task],
                    "length": n,
                    "dataset_from_index": first,
                    "dataset_to_index": first + n,
                    "success": ep.success,
                    "dropped_steps": ep.dropped,
                    **{
                        f"stats/{feat}/{k}": np.asarray(v).tolist()
                        for feat, s in ep_stats.items()
                        for k, v in s.items()
                    },
                }
            )
            ep_file, ep_table = self._episodes_with(row)
            ep_path = self.root / EPISODES_PATH.format(
                chunk_index=ep_file[0], file_index=ep_file[1]
            )
            staged.append((_write_parquet(ep_table, ep_path), ep_path))
            all_stats = stats_mod.aggregate([self.stats, ep_stats] if self.stats else [ep_stats])
            target = self.root / STATS_PATH
            staged.append((_write_json(stats_mod.to_json(all_stats), target), target))
            probes = {key: _partial(path) for key, path in video_files.items()}
            info = self._info_after(spec, index + 1, first + n, len(tasks), probes)
            staged.append((_write_json(info, self.root / INFO_PATH), self.root / INFO_PATH))
        except BaseException:
            for partial, _ in staged:
                partial.unlink(missing_ok=True)
            raise
        published: list[Path] = []
        try:
            _publish(staged, published)
        finally:
            if ep_path in published:
                # The episodes table names it: the episode is in the dataset (even if
                # a later rename failed: stats and info catch up at the next commit).
                self.info, self.tasks, self.stats = info, tasks, all_stats
                self._episodes_file, self._episodes_table = ep_file, ep_table
                self._last = {
                    **row,
                    "meta/episodes/chunk_index": ep_file[0],
                    "meta/episodes/file_index": ep_file[1],
                }
        for path in ep.videos.values():
            path.unlink(missing_ok=True)
        return SavedEpisode(index, n, task_index, data_file, video_files)

    def _stage_video(
        self, key: str, ep: EpisodeData, spec: DatasetSpec, row: dict[str, Any]
    ) -> tuple[Path, Path]:
        """The camera's file with the episode appended, as a partial; its place goes in `row`."""
        segment = ep.videos[key]
        (chunk, file), base_frames = self._target_video(key, segment.stat().st_size, ep.length)
        target = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
        partial = _partial(target)
        video.append(target if base_frames else None, base_frames, segment, partial, spec.fps)
        _fsync(partial)
        start = base_frames / spec.fps
        row[f"videos/{key}/chunk_index"] = chunk
        row[f"videos/{key}/file_index"] = file
        row[f"videos/{key}/from_timestamp"] = start
        row[f"videos/{key}/to_timestamp"] = start + ep.length / spec.fps
        return partial, target

    def _stage_rows(self, rows: pa.Table, first: int, row: dict[str, Any]) -> tuple[Path, Path]:
        """The data file with the rows appended (and none past `first` before them), as a partial."""
        (chunk, file), base_rows = self._target_data(rows.nbytes, rows.num_rows)
        target = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
        table = rows
        if base_rows:
            old = pq.read_table(target).select(rows.column_names).cast(rows.schema)
            table = pa.concat_tables([old.filter(pc.less(old["index"], first)), rows])
        row["data/chunk_index"], row["data/file_index"] = chunk, file
        return _write_parquet(table, target), target

    def _rows(
        self, ep: EpisodeData, spec: DatasetSpec, index: int, first: int, task_index: int
    ) -> pa.Table:
        n = ep.length
        dof = len(spec.joint_names)
        states = np.asarray(ep.states, dtype=np.float32).reshape(n, dof)
        actions = np.asarray(ep.actions, dtype=np.float32).reshape(n, dof)
        frame = np.arange(n, dtype=np.int64)
        columns: dict[str, pa.Array] = {
            STATE_KEY: _fixed_list(states),
            ACTION_KEY: _fixed_list(actions),
        }
        if spec.environment_names:
            if ep.environment is None:
                raise ValueError(f"the dataset records {ENV_KEY}; the episode has none")
            env = np.asarray(ep.environment, dtype=np.float32).reshape(
                n, len(spec.environment_names)
            )
            columns[ENV_KEY] = _fixed_list(env)
        columns |= {
            # Frame k's time in its episode: where its video frame is (k / fps).
            "timestamp": pa.array((frame / spec.fps).astype(np.float32)),
            "frame_index": pa.array(frame),
            "episode_index": pa.array(np.full(n, index, dtype=np.int64)),
            "index": pa.array(first + frame),
            "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
        }
        table = pa.table(columns)
        return table.replace_schema_metadata({b"huggingface": _hf_features(spec)})

    @staticmethod
    def _episode_stats(rows: pa.Table, ep: EpisodeData) -> dict[str, stats_mod.Stats]:
        out: dict[str, stats_mod.Stats] = {}
        for name in rows.column_names:
            col = rows[name].combine_chunks()
            if isinstance(col.type, pa.FixedSizeListType):
                values = col.flatten().to_numpy().reshape(len(col), col.type.list_size)
            else:
                values = col.to_numpy()
            out[name] = stats_mod.vector_stats(values)
        out.update(ep.image_stats)
        return out

    def _next_after(self, chunk: int, file: int) -> tuple[int, int]:
        return (chunk + 1, 0) if file >= CHUNKS_SIZE - 1 else (chunk, file + 1)

    def _target_data(self, new_bytes: int, new_rows: int) -> tuple[tuple[int, int], int]:
        """(chunk, file) the rows go to, and how many committed rows that file already has."""
        last = self._last
        if last is None:
            return (0, 0), 0
        here = (int(last["data/chunk_index"]), int(last["data/file_index"]))
        path = self.root / DATA_PATH.format(chunk_index=here[0], file_index=here[1])
        if (
            path.is_file()
            and path.stat().st_size + new_bytes < DATA_FILES_SIZE_IN_MB * 2**20
            and pq.ParquetFile(path).metadata.num_rows + new_rows <= FILE_MAX_FRAMES
        ):
            return here, 1
        return self._next_after(*here), 0

    def _target_video(
        self, key: str, new_bytes: int, new_frames: int
    ) -> tuple[tuple[int, int], int]:
        """(chunk, file) the camera's frames go to, and the committed frames that file holds."""
        last = self._last
        if last is None or f"videos/{key}/chunk_index" not in last:
            return (0, 0), 0
        here = (int(last[f"videos/{key}/chunk_index"]), int(last[f"videos/{key}/file_index"]))
        path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=here[0], file_index=here[1])
        frames = round(float(last[f"videos/{key}/to_timestamp"]) * self.fps)
        if (
            path.is_file()
            and path.stat().st_size + new_bytes < VIDEO_FILES_SIZE_IN_MB * 2**20
            and frames + new_frames <= FILE_MAX_FRAMES
        ):
            return here, frames
        return self._next_after(*here), 0

    def _episodes_with(self, row: dict[str, Any]) -> tuple[tuple[int, int], pa.Table]:
        here = self._episodes_file
        old = self._episodes_table
        path = self.root / EPISODES_PATH.format(chunk_index=here[0], file_index=here[1])
        if (
            old is not None
            and path.is_file()
            and path.stat().st_size >= (DATA_FILES_SIZE_IN_MB * 2**20)
        ):
            here, old = self._next_after(*here), None
        row = {**row, "meta/episodes/chunk_index": here[0], "meta/episodes/file_index": here[1]}
        new = _episode_row(row)
        if old is None:
            return here, new
        # One chunk per column, not one per episode: the table is kept between commits,
        # and ~120 one-row chunks an episode grew the heap by ~0.15 MB an episode.
        table = pa.concat_tables([old, new], promote_options="permissive")
        return here, table.combine_chunks()

    def _info_after(
        self,
        spec: DatasetSpec,
        episodes: int,
        frames: int,
        tasks: int,
        video_files: Mapping[str, Path],
    ) -> dict[str, Any]:
        features = spec.features()
        old = (self.info or {}).get("features", {})
        for key, path in video_files.items():
            features[key]["info"] = old.get(key, {}).get("info") or video.video_info(path)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": spec.robot_type,
            "total_episodes": episodes,
            "total_frames": frames,
            "total_tasks": tasks,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": spec.fps,
            "splits": {"train": f"0:{episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if spec.cameras else None,
            "features": features,
        }

    def close(self) -> None:
        """Remove our scratch directory; if no episode was ever saved, the directories we made.

        Only empty directories are removed. If anything else is left (files
        of a first commit that was cut short), the scratch directory stays:
        it marks the directory as ours, so that a later run may use it
        although it is not empty.
        """
        if self.info is None:
            for top in ("meta", "data", "videos"):
                base = self.root / top
                if base.is_dir():
                    for d in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                        _rmdir(d)
                    _rmdir(base)
            if {p.name for p in self.root.iterdir()} != {STAGING}:
                return
        _rmdir(self.staging)
        if self.info is None and self._created:
            _rmdir(self.root)


# -- file helpers -----------------------------------------------------------


def _publish(staged: Sequence[tuple[Path, Path]], published: list[Path]) -> None:
    """Rename each partial over its target, in order, noting each in `published`.

    On a failure the partials left are removed and the error raised.
    """
    for done, (partial, target) in enumerate(staged):
        try:
            os.replace(partial, target)
        except BaseException:
            for left, _ in staged[done:]:
                left.unlink(missing_ok=True)
            raise
        published.append(target)
    for directory in {target.parent for _, target in staged}:
        _fsync_dir(directory)


def _rmdir(path: Path) -> None:
    """Remove `path` if it is an empty directory (never anything else)."""
    try:
        path.rmdir()
    except OSError:
        pass


def _partial(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(target.name + PARTIAL)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:
        pass  # some filesystems cannot sync a directory; the renames are still ordered


def _write_parquet(table: pa.Table, target: Path) -> Path:
    partial = _partial(target)
    pq.write_table(table, partial, compression="snappy")
    _fsync(partial)
    return partial


def _write_json(data: Any, target: Path) -> Path:
    partial = _partial(target)
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return partial


def _fixed_list(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _hf_features(spec: DatasetSpec) -> bytes:
    """The `datasets` library's own schema note, so Hugging Face `datasets` reads the types back."""

    def vec(n: int) -> dict[str, Any]:
        return {"feature": {"dtype": "float32", "_type": "Value"}, "length": n, "_type": "List"}

    dof = len(spec.joint_names)
    features: dict[str, Any] = {STATE_KEY: vec(dof), ACTION_KEY: vec(dof)}
    if spec.environment_names:
        features[ENV_KEY] = vec(len(spec.environment_names))
    for key, ft in INDEX_FEATURES.items():
        features[key] = {"dtype": ft["dtype"], "_type": "Value"}
    return json.dumps({"info": {"features": features}}).encode()


def _tasks_table(tasks: Mapping[str, int]) -> pa.Table:
    """`meta/tasks.parquet`: pandas reads it back indexed by the task text, as LeRobot expects."""
    ordered = sorted(tasks.items(), key=lambda kv: kv[1])
    table = pa.table(
        {
            "task_index": pa.array([i for _, i in ordered], type=pa.int64()),
            "task": pa.array([t for t, _ in ordered], type=pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


#: Columns of the episodes table that the format (or this writer) defines: an episode's own
#: columns may not use these names, nor their prefixes.
_RESERVED_COLUMNS = frozenset(
    {
        "episode_index",
        "tasks",
        "length",
        "dataset_from_index",
        "dataset_to_index",
        "success",
        "dropped_steps",
    }
)
_RESERVED_PREFIXES = ("data/", "videos/", "stats/", "meta/")


def episode_columns(columns: Mapping[str, Any]) -> dict[str, Any]:
    """An episode's own columns for the episodes table, checked: names that are not the
    format's, values that are a bool, int, float or str (None: the column is left empty)."""
    out: dict[str, Any] = {}
    for key, value in columns.items():
        if not isinstance(key, str) or not key or key in _RESERVED_COLUMNS:
            raise ValueError(f"{key!r} cannot name an episode column (the format uses it)")
        if key.startswith(_RESERVED_PREFIXES):
            raise ValueError(
                f"episode column {key!r}: names starting with {', '.join(_RESERVED_PREFIXES)}"
                " are the format's"
            )
        if value is None:
            continue
        if not isinstance(value, bool | int | float | str):
            raise ValueError(
                f"episode column {key!r}: a bool, int, float or str, got {type(value).__name__}"
            )
        out[key] = value
    return out


def _episode_row(row: Mapping[str, Any]) -> pa.Table:
    fixed = {
        "episode_index": pa.int64(),
        "tasks": pa.list_(pa.string()),
        "length": pa.int64(),
        "data/chunk_index": pa.int64(),
        "data/file_index": pa.int64(),
        "dataset_from_index": pa.int64(),
        "dataset_to_index": pa.int64(),
        "meta/episodes/chunk_index": pa.int64(),
        "meta/episodes/file_index": pa.int64(),
        "success": pa.bool_(),
        "dropped_steps": pa.int64(),
    }
    arrays = {}
    for key, value in row.items():
        if key in fixed:
            arrays[key] = pa.array([value], type=fixed[key])
        elif key.endswith(("chunk_index", "file_index")):
            arrays[key] = pa.array([value], type=pa.int64())
        elif key.endswith(("from_timestamp", "to_timestamp")):
            arrays[key] = pa.array([value], type=pa.float64())
        elif isinstance(value, bool):
            arrays[key] = pa.array([value], type=pa.bool_())
        elif isinstance(value, int):
            arrays[key] = pa.array([value], type=pa.int64())
        elif isinstance(value, float):
            arrays[key] = pa.array([value], type=pa.float64())
        else:
            arrays[key] = pa.array([value])
    return pa.table(arrays)
