"""Without a working OpenGL the sim world says so in one line naming the fix (a process of
its own per backend: MuJoCo picks its backend once, when first imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROGRAM = """
import asyncio, sys
try:
    from drivers.sim.camera import SimCamera
    from drivers.sim.config import SimCameraConfig
except ImportError as exc:
    print("IMPORT:", exc); sys.exit(3)
from drivers.sim.world import SimRenderError

async def main():
    try:
        async with SimCamera(SimCameraConfig(width=16, height=16)):
            print("RENDERED")
    except SimRenderError as exc:
        print("RENDER:", exc); sys.exit(4)

asyncio.run(main())
"""


def _run(gl: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MUJOCO_GL", "DISPLAY", "PYOPENGL_PLATFORM")
    }
    if gl is not None:
        env["MUJOCO_GL"] = gl
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.peer  # processes of their own
def test_gl_backends_work_or_fail_in_one_line_naming_the_fix():
    # Unset: drivers.sim picks EGL, which renders headless here.
    ok = _run(None)
    assert ok.returncode == 0 and "RENDERED" in ok.stdout, ok.stderr[-2000:]
    # OSMesa is not installed on this machine: MuJoCo cannot even be imported.
    osmesa = _run("osmesa")
    assert osmesa.returncode == 3, osmesa.stdout + osmesa.stderr[-2000:]
    line = osmesa.stdout.strip()
    assert "\n" not in line and "MUJOCO_GL='osmesa'" in line and "MUJOCO_GL=egl" in line
    # GLFW without a display: MuJoCo imports, the renderer cannot be made: fails at connect.
    glfw = _run("glfw")
    assert glfw.returncode == 4, glfw.stdout + glfw.stderr[-2000:]
    line = glfw.stdout.strip()
    assert "\n" not in line and "no working OpenGL" in line and "apt install libegl1" in line
    # Not a backend at all.
    bogus = _run("bogus")
    assert (
        bogus.returncode == 3 and "invalid value for environment variable MUJOCO_GL" in bogus.stdout
    )


def test_a_model_library_imported_after_a_render_does_not_crash_the_process():
    """The qwen-vla policy imports transformers (and with it triton) after the cameras have
    rendered; triton's LLVM loaded after Mesa's used to segfault the process (exit 139)."""
    pytest.importorskip("triton")
    program = (
        "import mujoco, numpy\n"
        "import drivers.sim\n"
        "m = mujoco.MjModel.from_xml_string(\"<mujoco><worldbody><geom type='sphere' size='.1'/>"
        '</worldbody></mujoco>")\n'
        "r = mujoco.Renderer(m, 16, 16); d = mujoco.MjData(m); r.update_scene(d)\n"
        "assert r.render().shape == (16, 16, 3)\n"
        "import triton.runtime\n"
        "print('ALIVE')\n"
    )
    env = {**os.environ, "MUJOCO_GL": "egl"}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "ALIVE" in done.stdout
