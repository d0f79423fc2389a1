"""Joint names and limits of the arms we ship drivers for, shared by a real driver and its fake twin.

One definition, so the fake robot the controller is tested against can never
drift from the limits the real driver enforces.
"""

from __future__ import annotations

import math

import numpy as np

from drivers.base import JointLimits

UR5_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
#: UR5 (CB3 and e-Series): every joint +-360 deg and 180 deg/s.
UR5_LIMITS = JointLimits(
    lower=np.full(6, -2 * math.pi),
    upper=np.full(6, 2 * math.pi),
    max_velocity=np.full(6, math.pi),
)
