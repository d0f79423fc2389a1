"""Fake twins of the real drivers: a UR5-like arm, a synthetic camera, a force sensor.

They run on the controller clock (`drivers.base.now()`), so under the test
harness's virtual clock a 60 s scenario runs in milliseconds; they are
registered through entry points exactly like the real drivers.
"""

from drivers.arms import UR5_LIMITS
from drivers.fake.camera import FakeCamera
from drivers.fake.robot import FakeRobot
from drivers.fake.sensor import FakeForceSensor

__all__ = ["UR5_LIMITS", "FakeCamera", "FakeForceSensor", "FakeRobot"]
