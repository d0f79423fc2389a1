"""The dashboard client against the simulator's dashboard server (port 29999, text lines)."""

from __future__ import annotations

import asyncio

import pytest

from drivers.errors import ConnectionLost, DriverError
from drivers.ur.dashboard import DashboardClient
from drivers.ur.sim import SimConfig, UrSimulator
from tests.ur.conftest import next_host

pytestmark = pytest.mark.virtual_clock  # in memory: UR's unlock wait costs no real time


async def test_power_on_brake_release_and_status():
    host = next_host()
    async with (
        UrSimulator(SimConfig(host=host, powered=False)) as sim,
        DashboardClient(host) as dash,
    ):
        assert dash.banner
        assert await dash.robot_mode() == "POWER_OFF"
        await dash.power_on()
        assert await dash.robot_mode() == "IDLE"
        await dash.brake_release()
        assert await dash.robot_mode() == "RUNNING"
        assert await dash.safety_status() == "NORMAL"
        assert await dash.program_state() in ("PLAYING", "STOPPED")
        assert await dash.is_in_remote_control() is True
        with pytest.raises(DriverError, match="'play' refused"):
            await dash.play()
        assert sim.arm.robot_mode == 7


async def test_unlock_respects_the_five_second_rule():
    host = next_host()
    async with (
        UrSimulator(SimConfig(host=host, unlock_delay=0.5)) as sim,
        DashboardClient(host) as dash,
    ):
        sim.protective_stop()
        assert await dash.safety_status() == "PROTECTIVE_STOP"
        assert await dash.unlock_protective_stop() is False  # too soon: refused
        assert await dash.unlock_protective_stop(wait=0.6) is True
        assert await dash.safety_status() == "NORMAL"


async def test_unreachable_or_closed_dashboard_is_connection_lost():
    host = next_host()
    with pytest.raises(ConnectionLost, match=host):
        async with DashboardClient(host, timeout=0.5):
            pass
    async with UrSimulator(SimConfig(host=host)) as sim:
        dash = DashboardClient(host, timeout=0.5)
        await dash.connect()
        await sim.close()
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionLost):
            await dash.robot_mode()
        await dash.close()
        await dash.close()
