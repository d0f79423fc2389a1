"""The simulated UR5 and its table, as MJCF written from UR5's published DH parameters.

Universal Robots publish the UR5's kinematics as standard Denavit-Hartenberg
parameters (link lengths `a`, offsets `d`, twists `alpha`); each MuJoCo body
below is one DH frame, so the model's joint zero and joint directions are the
real arm's, and `dh_forward_kinematics` (plain numpy, from the same table) is
an independent check of what MuJoCo computes. The joint limits come from
`drivers.arms` (the one definition the real driver, the fake and the safety
filter share); the geometry is simple capsules and cylinders around the DH
segments, for the cameras only: nothing in this world collides, so a
policy's motion is judged by where the tool point goes, not by contacts.

Frames: the world frame is the arm's base frame (z up, the table top at
z = 0). At the UR5 "home" pose the arm reaches towards -x with the tool
pointing down, so the workspace and the cubes lie on the -x side.

The arm alone (`arm_xml`) is also what the scripted expert builds to compute
its Jacobian, so the expert and the world can never disagree on kinematics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drivers.arms import UR5_JOINTS, UR5_LIMITS

#: UR5 DH parameters (Universal Robots, "DH parameters for calculations of
#: kinematics and dynamics"), metres and radians, joint 1 first.
UR5_DH_D = (0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823)
UR5_DH_A = (0.0, -0.425, -0.39225, 0.0, 0.0, 0.0)
UR5_DH_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)
#: Link masses (kg), from the same publication; with gravity compensated they
#: only shape how the simulated servo tracks.
UR5_MASSES = (3.7, 8.393, 2.33, 1.219, 1.219, 0.1879)

#: The tool: a straight finger along the flange's z axis; its tip is the tool point.
TOOL_LENGTH = 0.10
#: Name of the site at the tool point (the one `mj_jacSite` is asked about).
TOOL_SITE = "tool"

#: The cubes: edge 4 cm, resting on the table.
CUBE_HALF = 0.02
COLOURS = ("red", "green", "blue")
CUBE_RGBA = {"red": "0.85 0.1 0.1 1", "green": "0.1 0.7 0.15 1", "blue": "0.1 0.25 0.9 1"}

#: The workspace mat: a printed sheet under the cubes whose colour encodes
#: where on it a point lies (brightness along x, a warm-to-cool tint along y).
#: Why: the tiny VL's vision tower has relative (rotary) positions only and its
#: features are mean-pooled, so a token says what it shows but not where; on the
#: mat, the patch that shows a cube also shows the colour of the place under it,
#: which makes position a local feature. Measured (400 expert episodes, VL tuned
#: 2000 steps at 112 px): the named cube's (x, y) on held-out episodes to 0.025 m
#: RMSE with the mat, 0.032 m without (with 150 episodes the mat did worse:
#: easier to memorise layouts). Printed workspace mats are ordinary on real
#: cells; a pretrained 3B VL would not need one. It covers the cubes' region
#: (`drivers.sim.task.REGION_X/Y`) with a margin.
MAT_X = (-0.80, -0.20)
MAT_Y = (-0.45, 0.45)
#: The mat texture's side (texels): 4.7 mm a texel along x, 7 mm along y.
MAT_TEXELS = 128

#: Physics time step (s): 500 Hz, a UR e-Series controller's rate.
TIMESTEP = 0.002
#: Largest image a camera may ask for (the offscreen buffer's size).
MAX_IMAGE = 1024

#: Servo stiffness and joint armature: stiff enough that the simulated arm
#: tracks its reference within a few milliradians at full speed, as UR's
#: own joint servos do; damping is set per joint for critical damping.
SERVO_KP = 4000.0
ARMATURE = 1.0


def _quat_rx(alpha: float) -> str:
    return f"{math.cos(alpha / 2):.17g} {math.sin(alpha / 2):.17g} 0 0"


def _segment(p: Sequence[float], q: Sequence[float]) -> str:
    return " ".join(f"{v:.17g}" for v in (*p, *q))


def dh_forward_kinematics(q: Sequence[float], tool_length: float = TOOL_LENGTH) -> np.ndarray:
    """The tool point's pose (4x4) at joint positions `q`, from the DH table alone.

    Independent of MuJoCo: the test of the model compares the two.
    """
    t = np.eye(4)
    for i, theta in enumerate(q):
        c, s = math.cos(theta), math.sin(theta)
        ca, sa = math.cos(UR5_DH_ALPHA[i]), math.sin(UR5_DH_ALPHA[i])
        a, d = UR5_DH_A[i], UR5_DH_D[i]
        t = t @ np.array(
            [
                [c, -s * ca, s * sa, a * c],
                [s, c * ca, -c * sa, a * s],
                [0.0, sa, ca, d],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
    tool = np.eye(4)
    tool[2, 3] = tool_length
    return t @ tool


def _damping(mass: float, reach: float) -> float:
    """Joint damping for a critically damped servo on this joint (rough inertia: armature
    plus the links it carries as a point mass at `reach`)."""
    inertia = ARMATURE + mass * reach * reach
    return 2.0 * math.sqrt(SERVO_KP * inertia)


def arm_xml() -> str:
    """The UR5 bodies, joints and tool as an MJCF `<body>` tree (world frame = base frame)."""
    lo, hi = UR5_LIMITS.lower, UR5_LIMITS.upper
    d, a, al = UR5_DH_D, UR5_DH_A, UR5_DH_ALPHA

    def joint(i: int) -> str:
        return (
            f'<joint name="{UR5_JOINTS[i]}" axis="0 0 1" range="{lo[i]:.17g} {hi[i]:.17g}"'
            ' damping="1"/>'
        )

    def inertial(i: int, com: Sequence[float]) -> str:
        m = UR5_MASSES[i]
        r = 0.05
        diag = 0.4 * m * r * r
        return (
            f'<inertial pos="{_segment(com, ())}" mass="{m}" diaginertia="{diag} {diag} {diag}"/>'
        )

    grey, dark, blue = (
        'rgba="0.75 0.77 0.8 1"',
        'rgba="0.2 0.22 0.25 1"',
        'rgba="0.35 0.55 0.8 1"',
    )
    return f"""
    <body name="base" pos="0 0 0">
      <geom type="cylinder" size="0.075 0.03" pos="0 0 0.03" {dark}/>
      <body name="shoulder_link" pos="0 0 0" gravcomp="1">
        {joint(0)}
        {inertial(0, (0, 0, d[0] / 2))}
        <geom type="cylinder" size="0.06 {d[0] / 2:.17g}" pos="0 0 {d[0] / 2:.17g}" {blue}/>
        <body name="upper_arm_link" pos="0 0 {d[0]:.17g}" quat="{_quat_rx(al[0])}" gravcomp="1">
          {joint(1)}
          {inertial(1, (a[1] / 2, 0, 0))}
          <geom type="cylinder" size="0.06 0.07" {blue}/>
          <geom type="capsule" size="0.045" fromto="{_segment((0, 0, 0), (a[1], 0, 0))}" {grey}/>
          <body name="forearm_link" pos="{a[1]:.17g} 0 0" gravcomp="1">
            {joint(2)}
            {inertial(2, (a[2] / 2, 0, 0))}
            <geom type="cylinder" size="0.05 0.06" {blue}/>
            <geom type="capsule" size="0.035" fromto="{_segment((0, 0, 0), (a[2], 0, 0))}" {grey}/>
            <body name="wrist_1_link" pos="{a[2]:.17g} 0 0" gravcomp="1">
              {joint(3)}
              {inertial(3, (0, 0, d[3] / 2))}
              <geom type="cylinder" size="0.04 {d[3] / 2:.17g}" pos="0 0 {d[3] / 2:.17g}" {blue}/>
              <body name="wrist_2_link" pos="0 0 {d[3]:.17g}" quat="{_quat_rx(al[3])}" gravcomp="1">
                {joint(4)}
                {inertial(4, (0, 0, d[4] / 2))}
                <geom type="cylinder" size="0.04 {d[4] / 2:.17g}" pos="0 0 {d[4] / 2:.17g}" {blue}/>
                <body name="wrist_3_link" pos="0 0 {d[4]:.17g}" quat="{_quat_rx(al[4])}" gravcomp="1">
                  {joint(5)}
                  {inertial(5, (0, 0, d[5] / 2))}
                  <geom type="cylinder" size="0.04 {d[5] / 2:.17g}" pos="0 0 {d[5] / 2:.17g}" {grey}/>
                  <site name="flange" pos="0 0 {d[5]:.17g}" size="0.005"/>
                  <geom type="cylinder" size="0.008 {TOOL_LENGTH / 2:.17g}"
                        pos="0 0 {d[5] + TOOL_LENGTH / 2:.17g}" rgba="0.95 0.75 0.1 1"/>
                  <site name="{TOOL_SITE}" pos="0 0 {d[5] + TOOL_LENGTH:.17g}" size="0.01"
                        rgba="1 0.9 0.2 1"/>
                  <camera name="wrist" pos="0.06 0 {d[5]:.17g}" xyaxes="0 1 0 1 0 0" fovy="70"/>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


def _actuators() -> str:
    """Per joint: a position servo (ctrl = reference angle) and a velocity servo
    (ctrl = reference speed). Together a PD on the reference trajectory: the
    velocity term damps the tracking error, not the motion, so the arm follows
    a moving reference without the lag a plain damper would add."""
    lo, hi = UR5_LIMITS.lower, UR5_LIMITS.upper
    vmax = UR5_LIMITS.max_velocity
    carried = [sum(UR5_MASSES[i:]) for i in range(6)]
    lever = (0.3, 0.6, 0.35, 0.1, 0.1, 0.05)
    position = [
        f'    <position name="{j}_position" joint="{j}" kp="{SERVO_KP}"'
        f' ctrlrange="{lo[i]:.17g} {hi[i]:.17g}"/>'
        for i, j in enumerate(UR5_JOINTS)
    ]
    velocity = [
        f'    <velocity name="{j}_velocity" joint="{j}" kv="{_damping(carried[i], lever[i]):.6g}"'
        f' ctrlrange="{-vmax[i]:.17g} {vmax[i]:.17g}"/>'
        for i, j in enumerate(UR5_JOINTS)
    ]
    return "\n".join(position + velocity)


def look_at(pos: Sequence[float], target: Sequence[float]) -> str:
    """MJCF `xyaxes` of a camera at `pos` looking at `target`, with world z up in the image."""
    p, t = np.asarray(pos, float), np.asarray(target, float)
    forward = (t - p) / np.linalg.norm(t - p)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.9g}" for v in (*right, *up))


@dataclass(frozen=True, slots=True)
class View:
    """A fixed camera of the scene."""

    name: str
    pos: tuple[float, float, float]
    xyaxes: str
    fovy: float = 45.0


#: The fixed views. `front` faces the arm across the table; `top` looks straight
#: down on the workspace (image up = away from the arm, image right = +y).
VIEWS = (
    View("front", (-1.35, 0.0, 0.65), look_at((-1.35, 0.0, 0.65), (-0.3, 0.0, 0.05)), 50.0),
    View("top", (-0.5, 0.0, 1.35), "0 1 0 -1 0 0", 45.0),
)
#: Every view a camera may name (`wrist` rides on the tool flange).
VIEW_NAMES = (*(v.name for v in VIEWS), "wrist")


def mat_texture(texels: int = MAT_TEXELS) -> np.ndarray:
    """The mat's image, RGB uint8 (texels, texels, 3); row r, column c.

    MuJoCo maps the box's top face with the texture's columns along the world's
    +x and its rows along -y (checked by rendering: `tests/sim/test_mat.py`).
    Brightness rises along +x (0.35 to 0.85 of full scale) and the tint goes
    from cool at -y to warm at +y, so every place on the mat has its own colour and two places that
    differ in x or y differ in colour by a similar amount.
    """
    u = np.linspace(0.0, 1.0, texels)[None, :, None]  # columns: along x
    v = np.linspace(0.0, 1.0, texels)[:, None, None]  # rows: along -y
    lum = 0.35 + 0.5 * u
    tint = (v - 0.5) * 2.0 * 0.35
    rgb = (
        lum
        * np.concatenate([1.0 - tint, np.full_like(v, 0.95), 1.0 + tint], axis=2)
        * np.ones((texels, texels, 1))
    )
    return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def scene_xml(*, conveyor: bool, mat: bool = False) -> str:
    """The whole world: table, arm, the three cubes (mocap bodies moved by the world), cameras.

    With `mat`, the workspace mat lies on the table (its texture is a flat
    placeholder here: the world fills it with `mat_texture()` before any
    renderer exists, since MJCF cannot carry pixel data inline), and the
    conveyor's belt, if any, is drawn as two rails so the mat stays visible.
    """
    cubes = "\n".join(
        f'    <body name="cube_{c}" mocap="true" pos="{-0.5 - 0.1 * i:.3f} 0 {CUBE_HALF}">\n'
        f'      <geom type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}" rgba="{CUBE_RGBA[c]}"/>\n'
        f"    </body>"
        for i, c in enumerate(COLOURS)
    )
    belt = ""
    if conveyor and mat:
        belt = "\n".join(
            f'    <geom name="belt_{side}" type="box" size="0.006 0.6 0.003"'
            f' pos="{x} 0 0.003" rgba="0.12 0.12 0.13 1"/>'
            for side, x in (("near", -0.326), ("far", -0.674))
        )
    elif conveyor:
        belt = (
            '    <geom name="belt" type="box" size="0.17 0.6 0.002" pos="-0.5 0 0.002"'
            ' rgba="0.12 0.12 0.13 1"/>'
        )
    mat_asset = mat_geom = ""
    if mat:
        mat_asset = (
            f'    <texture name="mat" type="2d" builtin="flat" width="{MAT_TEXELS}"'
            f' height="{MAT_TEXELS}" rgb1="1 1 1"/>\n    <material name="mat" texture="mat"/>'
        )
        (x0, x1), (y0, y1) = MAT_X, MAT_Y
        mat_geom = (
            f'    <geom name="mat" type="box" size="{(x1 - x0) / 2:.9g} {(y1 - y0) / 2:.9g} 0.0005"'
            f' pos="{(x0 + x1) / 2:.9g} {(y0 + y1) / 2:.9g} 0.0005" material="mat"/>'
        )
    views = "\n".join(
        f'    <camera name="{v.name}" pos="{_segment(v.pos, ())}" xyaxes="{v.xyaxes}"'
        f' fovy="{v.fovy}"/>'
        for v in VIEWS
    )
    return f"""<mujoco model="ur5-table">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast"/>
  <visual>
    <global offwidth="{MAX_IMAGE}" offheight="{MAX_IMAGE}"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.35 0.35 0.35" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.55 0.6 0.68" rgb2="0.2 0.22 0.25"
             width="64" height="64"/>
{mat_asset}
  </asset>
  <default>
    <geom contype="0" conaffinity="0"/>
    <joint armature="{ARMATURE}"/>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 3" dir="0.3 0.2 -1" diffuse="0.55 0.55 0.55"
           specular="0.1 0.1 0.1" castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.45 0.45 0.48 1"/>
    <geom name="table" type="box" size="0.6 0.7 0.02" pos="-0.35 0 -0.02" rgba="0.72 0.6 0.45 1"/>
{mat_geom}
{belt}
{views}
{arm_xml()}
{cubes}
  </worldbody>
  <actuator>
{_actuators()}
  </actuator>
</mujoco>
"""


def arm_only_xml() -> str:
    """The arm alone, for kinematics (the scripted expert's Jacobian)."""
    return f"""<mujoco model="ur5">
  <compiler angle="radian" autolimits="true"/>
  <default><geom contype="0" conaffinity="0"/><joint armature="{ARMATURE}"/></default>
  <worldbody>
{arm_xml()}
  </worldbody>
</mujoco>
"""
