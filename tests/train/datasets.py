"""LeRobot v3 datasets for the training tests, written by the project's own recorder.

Two kinds:
- `synthetic`: no simulator, a few tiny episodes in a second. Each episode has a
  "cube" at (u, v) in [0, 1]^2 drawn as a red square (camera `front` at (u, v),
  camera `top` at (v, u), so each camera sees one coordinate along its rows), and
  an arm whose commands move it toward a joint goal that is a fixed linear map of
  (u, v): the actions are learnable from the images and the state.
- `sim` (`record_sim`): the MuJoCo world's scripted expert through the harness,
  on virtual time, as `controller.collect` records it.

Both add `observation.environment_state` (the privileged `sensor.sim` layout: 3
cubes x (x, y, z, yaw) in COLOURS order, the target index, the conveyor speed)
after the recorder has written the episodes, for as long as the recorder does
not write it itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from controller.recording import Recorder
from drivers.arms import arm_info
from drivers.base import Frame, RobotState

ROBOT = arm_info("ur5", 6)
ENV_KEY = "observation.environment_state"
ENV_NAMES = [f"{c}_{f}" for c in ("red", "green", "blue") for f in ("x", "y", "z", "yaw")] + [
    "target_index",
    "conveyor_speed",
]
#: The synthetic table: (u, v) in [0, 1]^2 maps to x, y in metres here.
X_RANGE = (-0.65, -0.35)
Y_RANGE = (-0.30, 0.30)
#: A fixed joint goal per unit of u and v (rad), and the home pose.
HOME = np.array([0.0, -1.2, 1.4, -1.8, -1.57, 0.0])
GOAL_U = np.array([0.6, 0.2, -0.3, 0.1, 0.0, 0.2])
GOAL_V = np.array([-0.2, 0.4, 0.3, -0.2, 0.1, 0.0])


def synthetic_image(u: float, v: float, size: int, shade: int) -> np.ndarray:
    img = np.full((size, size, 3), shade, dtype=np.uint8)
    s = max(2, size // 6)
    r = round(v * (size - s))
    c = round(u * (size - s))
    img[r : r + s, c : c + s] = (230, 30, 30)
    return img


def env_state(u: float, v: float, target: int, rng: np.random.Generator) -> np.ndarray:
    """A sensor.sim-shaped reading whose named cube sits at (u, v) on the table."""
    values = []
    for i in range(3):
        if i == target:
            uu, vv = u, v
        else:
            uu, vv = rng.uniform(0, 1, 2)
        x = X_RANGE[0] + uu * (X_RANGE[1] - X_RANGE[0])
        y = Y_RANGE[0] + vv * (Y_RANGE[1] - Y_RANGE[0])
        values += [x, y, 0.02, 0.0]
    return np.asarray([*values, float(target), 0.0], dtype=np.float64)


def synthetic(
    root: Path,
    *,
    episodes: int = 4,
    steps: int = 12,
    size: int = 32,
    cameras: Sequence[str] = ("front", "top"),
    seed: int = 0,
    environment: bool = True,
) -> Path:
    """Write `episodes` synthetic episodes of `steps` steps; -> the dataset root."""
    rec = Recorder(root, fps=10, cameras=list(cameras), capacity=10_000)
    env_rows: list[np.ndarray] = []
    colours = ("red", "green", "blue")
    for e in range(episodes):
        rng = np.random.default_rng([seed, e])
        u, v = rng.uniform(0, 1, 2)
        target = int(rng.integers(0, 3))
        reading = env_state(u, v, target, rng)
        goal = HOME + u * GOAL_U + v * GOAL_V
        q = HOME + rng.normal(0, 0.05, 6)
        rec.start_episode(f"touch the {colours[target]} cube", ROBOT)
        for k in range(steps):
            images = {
                "front": synthetic_image(u, v, size, 40 + 10 * (k % 3)),
                "top": synthetic_image(v, u, size, 60),
                "wrist": synthetic_image(0.5 * (u + v), 0.5, size, 90),
            }
            frames = {
                name: Frame(name, images[name], capture_time=k / 10, seq=k) for name in cameras
            }
            command = q + np.clip(goal - q, -0.04, 0.04)
            state = RobotState(positions=q.copy(), velocities=np.zeros(6), capture_time=k / 10)
            assert rec.record(state, command, frames)
            env_rows.append(reading)
            q = command + rng.normal(0, 0.002, 6)
        rec.end_episode(e % 2 == 0)
    assert rec.close(60)
    if environment:
        add_environment_state(root, np.stack(env_rows))
    return root


def add_environment_state(root: Path, values: np.ndarray) -> None:
    """Add `observation.environment_state` (rows in dataset order) to every data file and to
    info.json, as `controller.collect` records it."""
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    offset = 0
    for path in files:
        table = pq.read_table(path)
        n = table.num_rows
        block = np.asarray(values[offset : offset + n], dtype=np.float32)
        offset += n
        column = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
        table = table.append_column(ENV_KEY, column)
        pq.write_table(table, path)
    assert offset == len(values), (offset, len(values))
    features: dict[str, Any] = {}
    for key, feature in info["features"].items():
        features[key] = feature
        if key == "action":
            features[ENV_KEY] = {
                "dtype": "float32",
                "shape": [values.shape[1]],
                "names": ENV_NAMES[: values.shape[1]],
            }
    info["features"] = features
    info_path.write_text(json.dumps(info, indent=4))


def record_sim(
    root: Path,
    seeds: Sequence[int],
    *,
    task: str = "reach",
    cameras: Sequence[str] = ("front", "top"),
    size: int = 224,
    after_success: int = 3,
    progress: bool = False,
) -> Path:
    """Expert episodes of the MuJoCo world, recorded through the harness on virtual time.

    Each episode ends `after_success` ticks after the world judged success (or at its
    limit). Returns the dataset root.
    """
    from controller.clock import run_virtual

    async def main() -> None:
        await _record_sim(root, seeds, task, cameras, size, after_success, progress)

    run_virtual(main)
    return root


async def _record_sim(
    root: Path,
    seeds: Sequence[int],
    task: str,
    cameras: Sequence[str],
    size: int,
    after_success: int,
    progress: bool,
) -> None:
    from controller.harness import ControllerHarness
    from controller.runtime import Phase
    from drivers.sim.camera import SimCamera
    from drivers.sim.config import SimCameraConfig, SimRobotConfig, SimSensorConfig
    from drivers.sim.robot import SimRobot
    from drivers.sim.sensor import SimSensor
    from drivers.sim.world import WorldConfig
    from policies.sim_expert import SimExpertOptions, SimExpertPolicy

    rec = Recorder(root, fps=10, cameras=list(cameras), capacity=10_000)
    env_rows: list[np.ndarray] = []
    successes = 0
    for n, seed in enumerate(seeds):
        name = f"train-{seed}"
        options = WorldConfig(task=task, seed=seed)
        robot = SimRobot(SimRobotConfig(world=name, options=options))
        cams = [
            SimCamera(SimCameraConfig(view=v, world=name, width=size, height=size, fps=10.0))
            for v in cameras
        ]
        sensor = SimSensor(SimSensorConfig(world=name))
        world = robot.world
        episode = world.episode()
        h = ControllerHarness(
            robot=robot,
            cameras=cams,
            sensors=[sensor],
            policy=SimExpertPolicy(SimExpertOptions(seed=seed)),
            instruction=episode.instruction,
        )
        rows: list[np.ndarray] = []
        left = [after_success]

        def on_event(
            event: str, time: float, detail: Any, h=h, rows=rows, left=left, world=world, ep=episode
        ):
            if event == "phase" and detail is Phase.ACTIVE:
                rec.start_episode(ep.instruction, h.controller.robot.info)
            if event == "action" and rec.episode_open:
                reading = h.controller.sensor_slots["sim"].latest()
                if rec.record(detail.state, detail.command.positions, detail.frames):
                    rows.append(np.asarray(reading.value.values, dtype=np.float64))
            if event == "tick" and world.success():
                left[0] -= 1
                if left[0] < 0:
                    h.controller.request_stop("touched")

        h.controller.observers.append(on_event)
        await h.run(episode.limit)
        outcome = world.outcome()
        successes += outcome.success
        rec.end_episode(outcome.success)
        await rec.drain()
        env_rows.extend(rows)
        if progress:
            print(
                f"episode {n + 1}/{len(seeds)} seed {seed}: {len(rows)} steps,"
                f" success {outcome.success}",
                flush=True,
            )
    assert rec.close(120)
    add_environment_state(root, np.stack(env_rows))


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="record sim expert episodes for training experiments")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0:40", help="START:STOP")
    p.add_argument("--task", default="reach")
    p.add_argument("--cameras", default="front,top")
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    start, stop = (int(x) for x in a.seeds.split(":"))
    record_sim(
        a.out,
        range(start, stop),
        task=a.task,
        cameras=a.cameras.split(","),
        size=a.size,
        progress=True,
    )
