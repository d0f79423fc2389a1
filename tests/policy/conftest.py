"""Shared fixtures: the tiny default Qwen2.5-VL is built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drivers.base import JointLimits, RobotInfo


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # Two cores here: more threads only add contention between tests' tensors.
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def encoder(tiny_dir: Path):
    from policies.qwen_vla.config import Preprocessing
    from policies.qwen_vla.vl_encoder import VLEncoder

    return VLEncoder.load(tiny_dir, Preprocessing(), "cpu")


def _make_images(n: int, seed: int, size: tuple[int, int] = (120, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _make_robot(dof: int = 6) -> RobotInfo:
    return RobotInfo(
        name="test-arm",
        joint_names=tuple(f"j{i}" for i in range(dof)),
        limits=JointLimits(
            lower=np.full(dof, -3.0), upper=np.full(dof, 3.0), max_velocity=np.full(dof, 1.0)
        ),
    )


@pytest.fixture(scope="session")
def make_images():
    """`make_images(n, seed, size=(h, w))` -> n random RGB uint8 images."""
    return _make_images


@pytest.fixture(scope="session")
def make_robot():
    """`make_robot(dof)` -> a RobotInfo with +-3 rad limits."""
    return _make_robot
