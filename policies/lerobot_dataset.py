"""A reader of LeRobot v3.0 datasets (pyarrow + PyAV), for training: no LeRobot import.

LeRobot itself pins an older torch than ours, so the training tools read the
format directly, from its published layout:

```
meta/info.json                              fps, features, path templates
meta/tasks.parquet                          task_index, and the task text (the pandas index)
meta/episodes/chunk-*/file-*.parquet        one row per episode: length, tasks,
                                            dataset_from_index/to_index, data/chunk_index,
                                            data/file_index, videos/<key>/{chunk_index,
                                            file_index, from_timestamp, to_timestamp},
                                            optionally success and seed
data/chunk-*/file-*.parquet                 one row per frame
videos/<key>/chunk-*/file-*.mp4             one file per camera, episodes back to back
```

Row k of an episode goes with video frame k, found as LeRobot finds it: at
`from_timestamp + timestamp` in the camera's file, within `TOLERANCE_S`.

Every problem is one `DatasetError` line naming the file and what is wrong:
not a dataset, an unreadable or corrupt parquet file, a video that is corrupt
or ends before an episode's frames do, a camera the caller needs missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from policies.errors import PolicyError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_GLOB = "meta/episodes/chunk-*/file-*.parquet"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ENV_KEY = "observation.environment_state"
IMAGE_PREFIX = "observation.images."
#: LeRobotDataset's default tolerance between a row's timestamp and its video frame.
TOLERANCE_S = 1e-4
#: info.json is a few KiB; anything much bigger is not one.
MAX_INFO_BYTES = 16 << 20


class DatasetError(PolicyError):
    """A dataset is missing, unreadable, corrupt, or lacks what the caller needs."""


def camera_name(key: str) -> str:
    """`observation.images.front` -> `front`."""
    return key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key


def sanitize_camera(name: str) -> str:
    """A camera's name as the recorder stores it in a feature key (`observation.images.<this>`).

    The recorder's rule (`controller.recording.camera_key`), repeated here because a
    policy may not import the controller: run-time frames carry the driver's name, and
    comparing it with a dataset's camera must apply the same rule.
    """
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)


@dataclass(frozen=True)
class VideoRef:
    """Where one camera's frames of one episode are: a file and a time range in it."""

    path: Path
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of the episodes table."""

    index: int
    length: int
    task: str
    from_index: int
    to_index: int
    data_file: Path
    videos: dict[str, VideoRef]
    success: bool | None = None
    seed: int | None = None


@dataclass(frozen=True)
class EpisodeRows:
    """An episode's rows as arrays, in frame order."""

    state: np.ndarray  # (n, dof) float32
    action: np.ndarray  # (n, dof) float32
    timestamp: np.ndarray  # (n,) float32, s from the episode's start
    frame_index: np.ndarray  # (n,) int64
    episode_index: np.ndarray  # (n,) int64
    task_index: np.ndarray  # (n,) int64
    environment_state: np.ndarray | None = None  # (n, m) float32, privileged

    def __len__(self) -> int:
        return len(self.state)


class LeRobotDataset:
    """A LeRobot v3.0 dataset on disk, read on demand (rows per data file, frames per episode)."""

    def __init__(
        self,
        root: Path,
        info: dict[str, Any],
        tasks: dict[int, str],
        episodes: list[EpisodeInfo],
    ) -> None:
        self.root = root
        self.info = info
        self.tasks = tasks
        self.episodes = episodes
        self._tables: dict[Path, Any] = {}

    # -- opening ---------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> LeRobotDataset:
        """Read the metadata (info, tasks, episodes); rows and frames are read when asked."""
        import pyarrow as pa

        root = Path(root).expanduser()
        if not root.is_dir():
            raise DatasetError(f"dataset {root}: no such directory")
        info = _read_info(root)
        features = info.get("features")
        if not isinstance(features, dict):
            raise DatasetError(f"dataset {root}: {INFO_PATH} has no 'features' table")
        for key in (STATE_KEY, ACTION_KEY):
            if key not in features:
                raise DatasetError(
                    f"dataset {root}: {INFO_PATH} has no {key!r} feature (a policy learns"
                    f" from {STATE_KEY!r} and {ACTION_KEY!r})"
                )
        for key in ("data_path", "fps"):
            if key not in info:
                raise DatasetError(f"dataset {root}: {INFO_PATH} has no {key!r}")
        if any(f.get("dtype") == "video" for f in features.values()) and not info.get("video_path"):
            raise DatasetError(f"dataset {root}: {INFO_PATH} has video features but no video_path")

        tasks_file = root / TASKS_PATH
        table = _read_parquet(tasks_file, root)
        try:
            pandas = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
            index_cols = pandas.get("index_columns") or []
            text_col = next(
                (c for c in index_cols if isinstance(c, str) and c in table.column_names),
                "task" if "task" in table.column_names else "__index_level_0__",
            )
            tasks = {
                int(i): str(t)
                for i, t in zip(
                    table["task_index"].to_pylist(), table[text_col].to_pylist(), strict=True
                )
            }
        except (KeyError, ValueError, TypeError) as exc:
            raise DatasetError(
                f"dataset {root}: {TASKS_PATH} is not a tasks table ({type(exc).__name__}: {exc})"
            ) from None

        files = sorted(root.glob(EPISODES_GLOB))
        if not files:
            raise DatasetError(f"dataset {root}: no episodes table ({EPISODES_GLOB})")
        try:
            rows = pa.concat_tables(
                [_read_parquet(f, root) for f in files], promote_options="permissive"
            ).to_pylist()
        except pa.ArrowException as exc:
            raise DatasetError(
                f"dataset {root}: the episodes tables do not agree ({exc})"
            ) from None
        camera_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
        episodes = [_episode(root, info, tasks, camera_keys, row) for row in rows]
        episodes.sort(key=lambda e: e.index)
        if [e.index for e in episodes] != list(range(len(episodes))):
            raise DatasetError(
                f"dataset {root}: episode indices are not 0..{len(episodes) - 1}"
                f" ({[e.index for e in episodes][:8]}...)"
            )
        return cls(root, info, tasks, episodes)

    # -- what it holds ----------------------------------------------------------
    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def camera_keys(self) -> list[str]:
        """Video features, in info.json's order (`observation.images.<name>`)."""
        return [k for k, f in self.features.items() if f.get("dtype") == "video"]

    @property
    def cameras(self) -> list[str]:
        """Camera names (the key without its prefix), in info.json's order."""
        return [camera_name(k) for k in self.camera_keys]

    @property
    def joint_names(self) -> tuple[str, ...] | None:
        names = self.features[STATE_KEY].get("names")
        return tuple(str(n) for n in names) if isinstance(names, list) else None

    @property
    def has_environment_state(self) -> bool:
        return ENV_KEY in self.features

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def camera_key(self, camera: str) -> str:
        """A camera name (or a key) -> its feature key; DatasetError naming what the dataset has."""
        key = camera if camera.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + sanitize_camera(camera)
        if key not in self.camera_keys:
            raise DatasetError(
                f"dataset {self.root}: no camera {camera!r} (it records"
                f" {self.cameras or 'no camera'})"
            )
        return key

    def require_cameras(self, cameras: Sequence[str]) -> list[str]:
        """The feature keys of `cameras`, in that order; one line naming the first missing one."""
        if not cameras:
            raise DatasetError(f"dataset {self.root}: no camera chosen")
        return [self.camera_key(c) for c in cameras]

    def digest(self) -> str:
        """An identity of the dataset's content: the episodes tables' bytes.

        Every commit rewrites them (lengths, tasks, where rows and frames are), so a
        dataset that gained, lost or re-recorded an episode has another digest.
        """
        import hashlib

        h = hashlib.sha256()
        for f in sorted(self.root.glob(EPISODES_GLOB)):
            h.update(f.relative_to(self.root).as_posix().encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]

    # -- rows ----------------------------------------------------------------
    def rows(self, episode: int) -> EpisodeRows:
        """An episode's rows, checked: its frame indices are 0..n-1 and its count is its length."""
        ep = self._episode_info(episode)
        table = self._table(ep.data_file)
        import pyarrow.compute as pc

        try:
            index = table["index"]
            mask = pc.and_(pc.greater_equal(index, ep.from_index), pc.less(index, ep.to_index))
            part = table.filter(mask)
            state = _matrix(part, STATE_KEY)
            action = _matrix(part, ACTION_KEY)
            env = _matrix(part, ENV_KEY) if ENV_KEY in part.column_names else None
            rows = EpisodeRows(
                state=state,
                action=action,
                timestamp=part["timestamp"].to_numpy().astype(np.float32),
                frame_index=part["frame_index"].to_numpy().astype(np.int64),
                episode_index=part["episode_index"].to_numpy().astype(np.int64),
                task_index=part["task_index"].to_numpy().astype(np.int64),
                environment_state=env,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DatasetError(
                f"dataset {self.root}: {_rel(ep.data_file, self.root)}: rows of episode"
                f" {episode} are malformed ({type(exc).__name__}: {exc})"
            ) from None
        if len(rows) != ep.length or not np.array_equal(rows.frame_index, np.arange(ep.length)):
            raise DatasetError(
                f"dataset {self.root}: {_rel(ep.data_file, self.root)}: episode {episode} has"
                f" {len(rows)} rows (frame indices {rows.frame_index[:3].tolist()}...), its"
                f" metadata says {ep.length}"
            )
        if self.has_environment_state and rows.environment_state is None:
            raise DatasetError(
                f"dataset {self.root}: {_rel(ep.data_file, self.root)} has no {ENV_KEY!r} column"
                " although info.json declares it"
            )
        return rows

    def _table(self, path: Path) -> Any:
        if path not in self._tables:
            self._tables[path] = _read_parquet(path, self.root)
        return self._tables[path]

    def _episode_info(self, episode: int) -> EpisodeInfo:
        if not 0 <= episode < len(self.episodes):
            raise DatasetError(
                f"dataset {self.root}: no episode {episode} (it has {len(self.episodes)})"
            )
        return self.episodes[episode]

    # -- video frames ---------------------------------------------------------
    def frames(self, episode: int, camera: str) -> np.ndarray:
        """The episode's frames of `camera`, (n, H, W, 3) uint8 RGB: row k <-> frame k.

        Decoded from the camera's file by seeking to the episode's start (LeRobot
        writes a keyframe every 2 frames, so a seek costs little) and matching each
        row's time within `TOLERANCE_S`.
        """
        import av

        ep = self._episode_info(episode)
        key = self.camera_key(camera)
        ref = ep.videos.get(key)
        if ref is None:
            raise DatasetError(
                f"dataset {self.root}: episode {episode} has no video of camera {camera!r}"
            )
        name = _rel(ref.path, self.root)
        if not ref.path.is_file():
            raise DatasetError(f"dataset {self.root}: missing video {name}")
        n = ep.length
        want = ref.from_timestamp + np.arange(n) / self.fps
        out: list[np.ndarray | None] = [None] * n
        try:
            with av.open(str(ref.path)) as container:
                if not container.streams.video:
                    raise DatasetError(f"dataset {self.root}: video {name} has no video stream")
                stream = container.streams.video[0]
                tb = Fraction(stream.time_base)
                start = int(max(0.0, ref.from_timestamp - 1.0 / self.fps) / tb)
                container.seek(start, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * tb)
                    if t > want[-1] + TOLERANCE_S:
                        break
                    k = round((t - ref.from_timestamp) * self.fps)
                    if 0 <= k < n and abs(want[k] - t) < TOLERANCE_S:
                        out[k] = frame.to_ndarray(format="rgb24")
        except DatasetError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
            raise DatasetError(
                f"dataset {self.root}: video {name} is corrupt or unreadable:"
                f" {type(exc).__name__}: {exc}"
            ) from None
        missing = [k for k, f in enumerate(out) if f is None]
        if missing:
            raise DatasetError(
                f"dataset {self.root}: video {name} lacks {len(missing)} of episode {episode}'s"
                f" {n} frames (first missing: frame {missing[0]} at"
                f" {want[missing[0]]:.3f} s): truncated or corrupt"
            )
        shape = self.features[key].get("shape")
        stacked = np.stack(out)  # type: ignore[arg-type]
        if isinstance(shape, list) and len(shape) == 3 and stacked.shape[1:] != tuple(shape):
            raise DatasetError(
                f"dataset {self.root}: video {name} has frames of {stacked.shape[1:]},"
                f" info.json says {tuple(shape)}"
            )
        return stacked

    def check(self, episodes: Iterable[int] | None = None) -> None:
        """Read every row of the episodes given (default all); DatasetError on the first problem.

        Videos are only opened here (their frames are checked when decoded).
        """
        import av

        chosen = range(len(self.episodes)) if episodes is None else episodes
        seen: set[Path] = set()
        for e in chosen:
            self.rows(e)
            for ref in self._episode_info(e).videos.values():
                if ref.path in seen:
                    continue
                seen.add(ref.path)
                name = _rel(ref.path, self.root)
                if not ref.path.is_file():
                    raise DatasetError(f"dataset {self.root}: missing video {name}")
                try:
                    with av.open(str(ref.path)) as c:
                        if not c.streams.video:
                            raise DatasetError(
                                f"dataset {self.root}: video {name} has no video stream"
                            )
                except (av.error.FFmpegError, OSError) as exc:
                    raise DatasetError(
                        f"dataset {self.root}: video {name} is corrupt or unreadable:"
                        f" {type(exc).__name__}: {exc}"
                    ) from None


# -- helpers -------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _read_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{root} is not a LeRobot v3 dataset: no {INFO_PATH}")
    try:
        data = path.read_bytes()[: MAX_INFO_BYTES + 1]
    except OSError as exc:
        raise DatasetError(f"dataset {root}: {INFO_PATH} cannot be read: {exc.strerror}") from None
    if len(data) > MAX_INFO_BYTES:
        raise DatasetError(f"dataset {root}: {INFO_PATH} is larger than {MAX_INFO_BYTES} bytes")
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"dataset {root}: {INFO_PATH} is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DatasetError(f"dataset {root}: {INFO_PATH} is not a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(
            f"dataset {root}: LeRobot format {version!r}; only {CODEBASE_VERSION} is read"
        )
    return info


def _read_parquet(path: Path, root: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = _rel(path, root)
    if not path.is_file():
        raise DatasetError(f"dataset {root}: missing {name}")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(
            f"dataset {root}: {name} is not a readable parquet file ({exc})"
        ) from None


def _matrix(table: Any, key: str) -> np.ndarray:
    """A fixed-size-list (or list) column -> (n, d) float32."""
    import pyarrow as pa

    col = table[key].combine_chunks()
    n = len(col)
    if isinstance(col.type, pa.FixedSizeListType):
        values = col.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(n, col.type.list_size).astype(np.float32)
    rows = col.to_pylist()
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"column {key!r} is not a vector per row")
    return arr


def _episode(
    root: Path,
    info: dict[str, Any],
    tasks: dict[int, str],
    camera_keys: Sequence[str],
    row: dict[str, Any],
) -> EpisodeInfo:
    where = f"dataset {root}: episodes table"
    try:
        index = int(row["episode_index"])
        length = int(row["length"])
        listed = row.get("tasks") or []
        task = str(listed[0]) if listed else None
        data_file = root / info["data_path"].format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )
        videos = {}
        for key in camera_keys:
            if row.get(f"videos/{key}/chunk_index") is None:
                raise DatasetError(f"{where}: episode {index} has no place in the video of {key!r}")
            path = root / info["video_path"].format(
                video_key=key,
                chunk_index=int(row[f"videos/{key}/chunk_index"]),
                file_index=int(row[f"videos/{key}/file_index"]),
            )
            videos[key] = VideoRef(
                path,
                float(row[f"videos/{key}/from_timestamp"]),
                float(row[f"videos/{key}/to_timestamp"]),
            )
        success = row.get("success")
        seed = row.get("seed")
        ep = EpisodeInfo(
            index=index,
            length=length,
            task=task or "",
            from_index=int(row["dataset_from_index"]),
            to_index=int(row["dataset_to_index"]),
            data_file=data_file,
            videos=videos,
            success=None if success is None else bool(success),
            seed=None if seed is None else int(seed),
        )
    except DatasetError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise DatasetError(f"{where}: a row is malformed ({type(exc).__name__}: {exc})") from None
    if length < 1 or ep.to_index - ep.from_index != length:
        raise DatasetError(
            f"{where}: episode {index} has length {length} but rows {ep.from_index}..{ep.to_index}"
        )
    if not ep.task:
        raise DatasetError(f"{where}: episode {index} names no task")
    if ep.task not in tasks.values():
        raise DatasetError(f"{where}: episode {index}'s task {ep.task!r} is not in {TASKS_PATH}")
    return ep
