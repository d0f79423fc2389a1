"""A simulated UR5 on a table with three cubes (MuJoCo), as ordinary driver plugins.

One world per name (`world = "default"`) is shared by the three drivers
that name it: `robot.sim` (joint states, position commands through a
velocity-limited joint servo), `camera.sim` (rendered views of the same
world) and `sensor.sim` (privileged object poses: for a scripted expert and
for scoring, never for a policy that is meant to see). The world's time
follows the controller clock (`drivers.base.now()`): it steps to the current
time whenever a driver reads or commands it, so an episode runs in virtual
time under the test harness and in real time from the command line.

MuJoCo picks its OpenGL backend when it is first imported, from `MUJOCO_GL`;
headless machines need EGL, so it is set here, before the first import, when
the user has not chosen one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os

#: The OpenGL backend MuJoCo renders with (set to EGL here when unset: headless rendering).
GL_BACKEND = os.environ.setdefault("MUJOCO_GL", "egl")

GL_FIX = (
    "run with MUJOCO_GL=egl and an EGL driver installed (Debian/Ubuntu: apt install libegl1"
    " libgl1-mesa-dri), or MUJOCO_GL=osmesa with libosmesa6, or MUJOCO_GL=glfw on a desktop"
)

# PyOpenGL (imported by MuJoCo for EGL) logs at INFO that its optional C speed-ups are absent.
logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)

# Triton (installed with torch on Linux) carries its own LLVM; importing it after Mesa's EGL
# driver has loaded LLVM for a MuJoCo render segfaults the process (the qwen-vla policy's
# transformers import does that). Loaded first, both coexist: so load it before any render.
if importlib.util.find_spec("triton") is not None:
    with contextlib.suppress(Exception):
        import triton  # noqa: F401

try:
    import mujoco  # imported here first, so that MUJOCO_GL above applies
except ModuleNotFoundError as exc:
    raise ImportError(
        f"the simulated world needs MuJoCo ({exc}): pip install 'mujoco>=3.2,<5'"
    ) from exc
except Exception as exc:  # an invalid MUJOCO_GL, or a backend whose libraries are missing
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    raise ImportError(
        f"MuJoCo cannot start with MUJOCO_GL={GL_BACKEND!r} ({type(exc).__name__}: {first});"
        f" {GL_FIX}"
    ) from exc


def _log_mujoco_warning(message: str) -> None:
    logging.getLogger("drivers.sim.mujoco").warning("MuJoCo: %s", message)


# MuJoCo's own warning handler prints and appends to MUJOCO_LOG.TXT in the working
# directory; its warnings go to the log instead (unless someone installed a handler).
if mujoco.get_mju_user_warning() is None:
    mujoco.set_mju_user_warning(_log_mujoco_warning)

from drivers.sim.task import COLOURS, TASKS, ObjectReading, instruction_for  # noqa: E402
from drivers.sim.world import (  # noqa: E402
    Episode,
    Outcome,
    SimWorld,
    WorldConfig,
    plan_episode,
    shared_world,
)

__all__ = [
    "COLOURS",
    "GL_BACKEND",
    "TASKS",
    "Episode",
    "ObjectReading",
    "Outcome",
    "SimWorld",
    "WorldConfig",
    "instruction_for",
    "plan_episode",
    "shared_world",
]
