"""Joint names and limits of the arms we ship drivers for, shared by a real driver and its fake twin.

One definition, so the fake robot the controller is tested against can never
drift from the limits the real driver enforces.
"""

from __future__ import annotations

import math

import numpy as np

from drivers.base import JointLimits, RobotInfo

UR5_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
#: UR5 (CB3 and e-Series): every joint +-360 deg and 180 deg/s.
UR5_LIMITS = JointLimits(
    lower=np.full(6, -2 * math.pi),
    upper=np.full(6, 2 * math.pi),
    max_velocity=np.full(6, math.pi),
)
#: A UR5's "home" pose (rad): the fake arm's default start.
UR5_HOME = (0.0, -1.57, 1.57, -1.57, -1.57, 0.0)


def arm_info(name: str, joints: int) -> RobotInfo:
    """The `RobotInfo` of an arm with `joints` joints: a UR5 for 6, else UR5-like joints.

    A 7-joint or a 3-joint fake arm gets joints named `joint_0`...,
    each with a UR5 joint's limits (+-360 deg, 180 deg/s), so a policy and
    the safety filter can be tested at another joint count with the same
    bounds a real arm would have.
    """
    if joints == len(UR5_JOINTS):
        return RobotInfo(name, UR5_JOINTS, UR5_LIMITS)
    if not 1 <= joints <= 64:
        raise ValueError(f"joints must be within 1..64, got {joints!r}")
    limits = JointLimits(
        lower=np.full(joints, -2 * math.pi),
        upper=np.full(joints, 2 * math.pi),
        max_velocity=np.full(joints, math.pi),
    )
    return RobotInfo(name, tuple(f"joint_{i}" for i in range(joints)), limits)
