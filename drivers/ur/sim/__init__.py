"""A UR controller simulator: RTDE, dashboard and script port, with fault injection.

Used by the tests and by `python -m drivers.ur.sim`, so that the UR5 driver
can be run end to end on any machine.
"""

from __future__ import annotations

from drivers.ur.sim.arm import Arm
from drivers.ur.sim.server import SimConfig, UrSimulator

__all__ = ["Arm", "SimConfig", "UrSimulator"]
