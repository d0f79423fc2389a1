"""The workspace mat: on by default, its colour says where a point lies (brightness along x,
tint along y) in the rendered views, and `mat=false` gives the plain table back."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from drivers.sim.model import MAT_X, MAT_Y, mat_texture, scene_xml
from drivers.sim.task import REGION_X, REGION_Y
from drivers.sim.world import SimWorld, WorldConfig

SIZE = 96


def _pixel(model: mujoco.MjModel, data: mujoco.MjData, view: str, point) -> tuple[int, int]:
    """Row and column of world `point` in `view` (a pinhole projection of the MJCF camera)."""
    cam = model.camera(view).id
    pos, rot = data.cam_xpos[cam], data.cam_xmat[cam].reshape(3, 3)
    local = rot.T @ (np.asarray(point, float) - pos)  # camera frame: x right, y up, -z forward
    f = SIZE / 2 / math.tan(math.radians(model.cam_fovy[cam]) / 2)
    col = SIZE / 2 + f * local[0] / -local[2]
    row = SIZE / 2 - f * local[1] / -local[2]
    return int(row), int(col)


def _views(mat: bool) -> tuple[SimWorld, dict[str, np.ndarray]]:
    world = SimWorld(WorldConfig(seed=4, mat=mat), name=f"mat-{mat}")
    world._t0 = 0.0  # world time 0 without a driver: a snapshot of the initial layout
    try:
        snap = world._snapshot()
        images = {v: world._render(v, SIZE, SIZE, snap) for v in ("front", "top")}
    finally:
        world._free_renderers()
        world._physics.shutdown()
        world._render_pool.shutdown()
    return world, images


@pytest.fixture(scope="module")
def rendered() -> dict[bool, tuple[SimWorld, dict[str, np.ndarray]]]:
    return {mat: _views(mat) for mat in (True, False)}


def test_the_mat_is_on_by_default_and_covers_the_cubes_region():
    assert WorldConfig().resolved().mat is True
    assert WorldConfig(mat=False).resolved().mat is False
    assert MAT_X[0] < REGION_X[0] < REGION_X[1] < MAT_X[1]
    assert MAT_Y[0] < REGION_Y[0] < REGION_Y[1] < MAT_Y[1]
    plain = mujoco.MjModel.from_xml_string(scene_xml(conveyor=False))
    with pytest.raises(KeyError):
        plain.geom("mat")


def test_the_texture_is_distinct_along_both_axes():
    img = mat_texture(32).astype(float)
    lum = img.mean(axis=2)
    tint = img[..., 0] - img[..., 2]
    assert np.all(np.diff(lum[5], axis=0) > 0)  # columns: brighter along x
    assert np.all(np.diff(tint[:, 5], axis=0) < 0)  # rows: redder at row 0


@pytest.mark.parametrize("view", ["front", "top"])
def test_the_rendered_mat_encodes_where_a_point_lies(rendered, view):
    """Points on the mat outside the cubes' region and away from the arm: farther along +x is
    brighter, farther along +y is warmer; without the mat all of them are the table's colour."""
    points = {
        "near_left": (-0.30, -0.38),
        "far_left": (-0.75, -0.38),
        "near_right": (-0.30, 0.38),
        "far_right": (-0.75, 0.38),
    }

    def colours(mat: bool) -> dict[str, np.ndarray]:
        world, images = rendered[mat]
        data = mujoco.MjData(world.model)
        mujoco.mj_forward(world.model, data)
        out = {}
        for name, (x, y) in points.items():
            r, c = _pixel(world.model, data, view, (x, y, 0.001))
            out[name] = images[view][r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).mean(0)
        return out

    on, off = colours(True), colours(False)
    lum = {k: v.mean() for k, v in on.items()}
    warm = {k: v[0] - v[2] for k, v in on.items()}
    assert lum["near_left"] > lum["far_left"] + 20 and lum["near_right"] > lum["far_right"] + 20
    assert warm["near_right"] > warm["near_left"] + 20 and warm["far_right"] > warm["far_left"] + 20
    table = np.stack(list(off.values()))
    assert np.ptp(table, axis=0).max() < 12  # plain table: one colour, shading aside
