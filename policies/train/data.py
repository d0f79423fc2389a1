"""Training samples from a LeRobot dataset: which frames, which episodes, and what to predict.

A sample is one row (episode e, frame k). What the policy is trained to output
there is what the controller will do with it at run time:

- the controller calls `act` with the state of tick k and executes row 0 of
  the chunk; the dataset's `action` of row k is the command it sent then.
  So the chunk's row j is the command of row k + j (the last command
  repeated past the episode's end), and the state is row k's;
- `act` maps the network's output to targets with the checkpoint's
  `ActionSpace.to_targets`; training inverts the same function
  (`from_targets`: atanh of the clipped ratio for `delta`), so the loss is
  measured on the very numbers the network will output.

`delta` targets are relative to the state of row k for every row of the
chunk, so row j's step is about j+1 periods of motion: `max_delta` is chosen
from the data over the whole horizon (`choose_action_space`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policies.lerobot_dataset import DatasetError, EpisodeRows, LeRobotDataset
from policies.qwen_vla.config import MAX_DELTA, ActionSpace, NormStats

#: `delta`: the largest step in the data maps to this ratio of max_delta (tanh stays
#: well inside its linear-ish range: atanh(0.8) = 1.1).
DELTA_HEADROOM = 0.8
#: Smallest max_delta chosen from data (rad): a dataset where nothing moves still
#: gets a usable action space.
MIN_DELTA = 1e-3
#: Smallest std used to normalise a state or an absolute action (rad): a joint that
#: never moved in the data must not blow its normalised value up at run time.
MIN_STD = 1e-2


@dataclass(frozen=True)
class Split:
    """Which episodes train and which validate (validation episodes are never trained on)."""

    train: tuple[int, ...]
    val: tuple[int, ...]


def split_episodes(
    episodes: Sequence[int], val_fraction: float, seed: int, *, val_min: int = 1
) -> Split:
    """A seeded split by episode (never by frame: neighbouring frames are near copies).

    At least `val_min` validation episodes when there are two or more episodes and
    `val_fraction` > 0; at least one training episode always.
    """
    eps = sorted(episodes)
    if not eps:
        raise DatasetError("no episodes to train on")
    n_val = 0
    if val_fraction > 0 and len(eps) > 1:
        n_val = min(len(eps) - 1, max(val_min, round(val_fraction * len(eps))))
    order = np.random.default_rng([seed, 7]).permutation(len(eps))
    val = tuple(sorted(eps[i] for i in order[:n_val]))
    train = tuple(e for e in eps if e not in set(val))
    return Split(train, val)


def chunk_indices(length: int, horizon: int) -> np.ndarray:
    """(length, horizon) row indices: row k's chunk is rows k..k+h-1, the last one repeated."""
    k = np.arange(length)[:, None] + np.arange(horizon)[None, :]
    return np.minimum(k, length - 1)


def choose_action_space(
    rows: Sequence[EpisodeRows],
    horizon: int,
    kind: str = "delta",
    max_delta: float | None = None,
) -> ActionSpace:
    """The action space a checkpoint trained on `rows` uses.

    `delta`: max_delta = the largest |command of row k+j - state of row k| over every
    row, chunk row j < horizon and joint, divided by `DELTA_HEADROOM`, within
    [MIN_DELTA, MAX_DELTA] (unless given). `absolute`: per-joint mean and std of
    the commands.
    """
    if kind == "delta":
        if max_delta is None:
            largest = 0.0
            for r in rows:
                chunk = r.action[chunk_indices(len(r), horizon)]  # (n, h, dof)
                largest = max(largest, float(np.max(np.abs(chunk - r.state[:, None, :]))))
            max_delta = min(MAX_DELTA, max(MIN_DELTA, largest / DELTA_HEADROOM))
        return ActionSpace(kind="delta", max_delta=float(max_delta))
    if kind == "absolute":
        actions = np.concatenate([r.action for r in rows]).astype(np.float64)
        return ActionSpace(kind="absolute", norm=norm_stats(actions))
    raise ValueError(f"action space {kind!r} is not 'delta' or 'absolute'")


def norm_stats(values: np.ndarray) -> NormStats:
    """Per-column mean and std (std at least `MIN_STD`)."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    std = np.maximum(values.std(axis=0), MIN_STD)
    return NormStats(tuple(float(v) for v in mean), tuple(float(v) for v in std))


def chunk_targets(rows: EpisodeRows, horizon: int, space: ActionSpace) -> np.ndarray:
    """(n, horizon, dof) float32: the normalised output that `space.to_targets` maps to each
    row's next `horizon` commands, from that row's state."""
    chunk = rows.action[chunk_indices(len(rows), horizon)].astype(np.float64)
    out = space.from_targets(rows.state[:, None, :].astype(np.float64), chunk)
    return out.astype(np.float32)


def perturb_states(
    space: ActionSpace,
    states: np.ndarray,
    chunks: np.ndarray,
    std: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(states + noise, the chunks relabelled so they command the same joint targets from the
    noisy states): a corrective label, "from here, go where the expert was going"."""
    commands = space.to_targets(states[:, None, :].astype(np.float64), chunks)
    noisy = states + rng.normal(0.0, std, states.shape)
    return noisy, space.from_targets(noisy[:, None, :], commands)


#: `observation.environment_state` layout (drivers/sim/task.py `ObjectReading`):
#: per cube x, y, z, yaw in COLOURS order, then the target index, then the conveyor speed.
CUBE_FIELDS = 4
N_CUBES = 3


def named_cube_xy(env: np.ndarray) -> np.ndarray:
    """(n, 14) sim readings -> (n, 2): the (x, y) of the cube each row's task names (m)."""
    env = np.asarray(env, dtype=np.float64)
    if env.ndim != 2 or env.shape[1] != N_CUBES * CUBE_FIELDS + 2:
        raise DatasetError(
            f"observation.environment_state has {env.shape[1:]} values per row; the named-cube"
            f" target needs the sim reading's {N_CUBES * CUBE_FIELDS + 2}"
        )
    target = np.rint(env[:, N_CUBES * CUBE_FIELDS]).astype(int)
    if np.any((target < 0) | (target >= N_CUBES)):
        raise DatasetError("observation.environment_state: a target index is not 0, 1 or 2")
    rows = np.arange(len(env))
    return np.stack([env[rows, target * CUBE_FIELDS], env[rows, target * CUBE_FIELDS + 1]], axis=1)


def cubes_xy(env: np.ndarray) -> np.ndarray:
    """(n, 14) sim readings -> (n, 8): the named cube's (x, y), then every cube's (x, y) in
    COLOURS order (m).

    Why both: a probe of the named cube alone must learn, from one number pair per
    image, both where the cubes are and which one the instruction names; every
    cube's place is three times the signal about where things are (the lead's
    measurement: at 224 px the named cube alone did not start to learn in 700
    steps, all three did by step ~400), and the named pair keeps the pooled
    feature carrying the instruction's choice, which the expert needs.
    """
    named = named_cube_xy(env)
    env = np.asarray(env, dtype=np.float64)
    every = [env[:, c * CUBE_FIELDS : c * CUBE_FIELDS + 2] for c in range(N_CUBES)]
    return np.concatenate([named, *every], axis=1)


AUX_TARGETS = ("none", "named-cube-xy", "cubes-xy")


class EpisodeStore:
    """Rows of the chosen episodes, and their frames per camera, decoded on demand.

    Decoded frames are kept in an LRU bounded by `frame_budget_mb`: a small dataset
    is decoded once, a large one is decoded again as episodes come back round.
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        episodes: Sequence[int],
        cameras: Sequence[str],
        *,
        frame_budget_mb: float = 2048,
    ) -> None:
        self.dataset = dataset
        self.cameras = list(cameras)
        self.keys = dataset.require_cameras(self.cameras)
        self.episodes = list(episodes)
        self.rows: dict[int, EpisodeRows] = {e: dataset.rows(e) for e in self.episodes}
        self.tasks: dict[int, str] = {e: dataset.episodes[e].task for e in self.episodes}
        self._frames: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._budget = int(frame_budget_mb * 2**20)

    def samples(self, episodes: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """Every (episode, frame) of the episodes given (default: all of the store's)."""
        eps = self.episodes if episodes is None else episodes
        return [(e, k) for e in eps for k in range(len(self.rows[e]))]

    def frames(self, episode: int) -> list[np.ndarray]:
        """One (n, H, W, 3) array per camera, in the store's camera order."""
        if episode in self._frames:
            self._frames.move_to_end(episode)
            return self._frames[episode]
        decoded = [self.dataset.frames(episode, key) for key in self.keys]
        size = sum(a.nbytes for a in decoded)
        self._frames[episode] = decoded
        self._bytes += size
        while self._bytes > self._budget and len(self._frames) > 1:
            _, old = self._frames.popitem(last=False)
            self._bytes -= sum(a.nbytes for a in old)
        return decoded

    def images(self, episode: int, frame: int) -> list[np.ndarray]:
        """The sample's images, one per camera, in camera order."""
        return [cam[frame] for cam in self.frames(episode)]


def lagged_frame(frame: int, max_lag: int, rng: np.random.Generator) -> int:
    """The frame whose features go with row `frame` when training for stale features:
    up to `max_lag` frames older (never before the episode's start)."""
    if max_lag <= 0:
        return frame
    return max(0, frame - int(rng.integers(0, max_lag + 1)))


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then a cosine down to `floor * peak` at `total`."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))
