"""Steps for a `Recorder` without a controller: a state, a command and a frame that tell step k apart."""

from __future__ import annotations

import numpy as np

from controller.recording import Recorder
from drivers.arms import arm_info
from drivers.base import Frame, RobotState

CAMERA = "cam"
SIZE = 64
ROBOT = arm_info("ur5", 6)


def image(seed: int, k: int) -> np.ndarray:
    """A gradient with a bright square whose place depends on (seed, k)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    img[..., 0] = xx * 4
    img[..., 1] = yy * 4
    img[..., 2] = (seed * 40) % 256
    x, y = (7 * k + 11 * seed) % (SIZE - 12), (5 * k + 3 * seed) % (SIZE - 12)
    img[y : y + 12, x : x + 12] = 255
    return img


def state(seed: int, k: int) -> RobotState:
    q = np.full(6, 0.01 * k + seed, dtype=np.float64)
    return RobotState(positions=q, velocities=np.zeros(6), capture_time=float(k))


def action(seed: int, k: int) -> np.ndarray:
    return np.full(6, 0.01 * k + seed + 0.005)


def record_episode(
    rec: Recorder,
    task: str,
    steps: int,
    seed: int,
    success: bool | None = True,
    *,
    kept: bool = True,
) -> None:
    """One episode of `steps` steps; with `kept`, every step must be accepted."""
    rec.start_episode(task, ROBOT)
    for k in range(steps):
        frame = Frame(CAMERA, image(seed, k), capture_time=float(k), seq=k)
        accepted = rec.record(state(seed, k), action(seed, k), {CAMERA: frame})
        assert accepted or not kept
    rec.end_episode(success)
