"""A plugin author's project gets the harness just by installing this package."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


@pytest.mark.peer  # pytest in a process of its own
def test_harness_fixtures_reach_an_outside_project(pytester):
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        test_mine="""
import pytest
from policies.fake import FakePolicy

@pytest.mark.virtual_clock
async def test_sixty_seconds(controller_harness, virtual_clock):
    start = virtual_clock.time()
    h = controller_harness(policy=FakePolicy(vl_latency=0.3))
    s = await h.run(60)
    assert s["ticks"] == 600 and s["missed_ticks"] == 0
    assert virtual_clock.time() - start >= 60

async def test_fixtures(fake_robot, fake_camera, fake_policy, sim_executor):
    assert fake_robot.info.dof == 6 and fake_camera.name == "fake"
"""
    )
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=2)
