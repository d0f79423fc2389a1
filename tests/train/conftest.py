"""Fixtures of the training tests: the tiny default VL, a synthetic dataset, one short
VL tuning run and a VL cache over the dataset, each made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import qwen_vl_utils  # noqa: F401  (see below)
import torch

from tests.train import datasets

# qwen_vl_utils imports torchvision, which loads triton and its own LLVM: imported after
# a MuJoCo EGL renderer exists (the sim recording test) it crashes the process, so it is
# imported first, as `QwenVLAPolicy.from_options` does for the controller.

#: Small everything: 32x32 frames become 56x56 inside the VL's bounds (4 tokens per image).
SIZE = 32


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Tiny tensors on two shared cores: a second thread only adds spin-waits (a VL step
    # measured 2-3x slower with 2 threads than with 1 under load).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 episodes of 12 steps, cameras front and top, with environment_state."""
    return datasets.synthetic(
        tmp_path_factory.mktemp("syn") / "ds", episodes=5, steps=12, size=SIZE
    )


def vl_args(dataset: Path, out: Path, tiny_cache: Path, *extra: str) -> list[str]:
    return [
        "vl",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--cache-dir",
        str(tiny_cache),
        "--batch",
        "6",
        "--val-fraction",
        "0.2",
        "--val-samples",
        "24",
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]


@pytest.fixture(scope="session")
def tuned(syn: Path, tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VL tuned for a few steps on `syn`, with the named-cube auxiliary target."""
    from policies.train.__main__ import main

    out = tmp_path_factory.mktemp("tuned") / "vl"
    args = vl_args(syn, out, tiny_cache, "--steps", "4", "--eval-every", "2")
    assert main([*args, "--aux-target", "named-cube-xy"]) == 0
    return out


@pytest.fixture(scope="session")
def cache(syn: Path, tuned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from policies import vl_cache

    out = tmp_path_factory.mktemp("cache") / "c"
    rc = vl_cache.main(
        [
            "build",
            "--lerobot",
            str(syn),
            "--vl-model",
            str(tuned),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out
