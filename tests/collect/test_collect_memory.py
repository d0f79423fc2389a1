"""A collection frees each episode: memory must not grow with the number of episodes.

Each episode builds a controller (~8 MB of preallocated telemetry rings) and a
sim world (a MuJoCo model and data, renderers, two thread pools). A user
collects thousands of episodes in one process: when each episode's objects
outlived it (the controller froze the heap at warm-up and never thawed it, so
their reference cycles were never collected), the collection grew by ~10 MB
of resident memory an episode.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

from controller import heap
from controller.runtime import Controller
from drivers.sim.world import SimWorld

from .helpers import TINY, collect


def _tracked(monkeypatch, cls: type) -> list[weakref.ref[Any]]:
    """Weak references to every `cls` made from now on."""
    made: list[weakref.ref[Any]] = []
    init = cls.__init__

    def tracking_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(cls, "__init__", tracking_init)
    return made


def test_no_episode_s_controller_or_world_outlives_the_collection(capsys, tmp_path, monkeypatch):
    controllers = _tracked(monkeypatch, Controller)
    worlds = _tracked(monkeypatch, SimWorld)
    code, _, err = collect(
        capsys, "--episodes", "3", "--episode-limit", "0.5", "--settle", "0",
        "--camera", "top", "--out", str(tmp_path / "ds"), *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert len(controllers) == len(worlds) == 3
    assert heap.holders() == 0, "a controller run left the heap frozen"
    gc.collect()
    alive = [r() for r in controllers + worlds if r() is not None]
    assert alive == [], f"{len(alive)} of 6 episode objects outlived the collection"
