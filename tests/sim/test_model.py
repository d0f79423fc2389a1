"""The MJCF arm is the UR5 of its published DH table, with the limits of drivers.arms."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from drivers.arms import UR5_HOME, UR5_JOINTS, UR5_LIMITS
from drivers.sim.model import (
    TOOL_LENGTH,
    TOOL_SITE,
    arm_only_xml,
    dh_forward_kinematics,
    scene_xml,
)


@pytest.fixture(scope="module")
def scene() -> tuple[mujoco.MjModel, mujoco.MjData]:
    model = mujoco.MjModel.from_xml_string(scene_xml(conveyor=False))
    return model, mujoco.MjData(model)


def test_tool_point_is_the_dh_forward_kinematics(scene):
    model, data = scene
    site = model.site(TOOL_SITE).id
    rng = np.random.default_rng(7)
    for q in [np.zeros(6), np.array(UR5_HOME), *rng.uniform(-math.pi, math.pi, (50, 6))]:
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        pose = dh_forward_kinematics(q)
        np.testing.assert_allclose(data.site_xpos[site], pose[:3, 3], atol=1e-12)
        np.testing.assert_allclose(data.site_xmat[site].reshape(3, 3), pose[:3, :3], atol=1e-12)


def test_published_reach_at_zero_pose():
    """At q = 0 the UR5 lies stretched along -x: the flange at x = a2 + a3, y = -(d4 + d6)."""
    flange = dh_forward_kinematics(np.zeros(6), tool_length=0.0)[:3, 3]
    np.testing.assert_allclose(flange, [-0.81725, -0.19145, -0.005491], atol=1e-6)


def test_home_pose_points_the_tool_down_over_the_table():
    pose = dh_forward_kinematics(UR5_HOME)
    np.testing.assert_allclose(pose[:3, 2], [0, 0, -1], atol=2e-3)
    assert pose[2, 3] > 0.2 and pose[0, 3] < -0.3  # above the table, on the workspace side
    assert TOOL_LENGTH > 0


def test_joint_limits_are_drivers_arms(scene):
    model, _ = scene
    for i, name in enumerate(UR5_JOINTS):
        joint = model.joint(name)
        assert joint.limited
        np.testing.assert_allclose(
            joint.range, [UR5_LIMITS.lower[i], UR5_LIMITS.upper[i]], rtol=0, atol=1e-12
        )
        pos = model.actuator(f"{name}_position")
        np.testing.assert_allclose(pos.ctrlrange, joint.range, atol=1e-12)
        vel = model.actuator(f"{name}_velocity")
        np.testing.assert_allclose(
            vel.ctrlrange, [-UR5_LIMITS.max_velocity[i], UR5_LIMITS.max_velocity[i]]
        )


def test_the_experts_arm_is_the_worlds_arm(scene):
    """The kinematic model the expert builds gives the world's tool point at any pose."""
    model, data = scene
    arm = mujoco.MjModel.from_xml_string(arm_only_xml())
    arm_data = mujoco.MjData(arm)
    q = np.array([0.3, -1.2, 1.4, -1.9, -1.5, 0.7])
    data.qpos[:] = q
    arm_data.qpos[:] = q
    mujoco.mj_kinematics(model, data)
    mujoco.mj_kinematics(arm, arm_data)
    np.testing.assert_array_equal(
        data.site_xpos[model.site(TOOL_SITE).id], arm_data.site_xpos[arm.site(TOOL_SITE).id]
    )
