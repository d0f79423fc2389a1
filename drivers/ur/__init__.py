"""Universal Robots UR5 driver (CB3 and e-Series): RTDE, dashboard, our robot-side program.

Importing this package is cheap; the driver class lives in `drivers.ur.robot`
and is found by the registry under `robot.ur5`.
"""
