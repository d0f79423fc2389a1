from __future__ import annotations

import pytest


@pytest.mark.virtual_clock
async def test_smoke(controller_harness, virtual_clock):
    h = controller_harness()
    s = await h.run(60)
    print(s)
    assert s["ticks"] >= 599
