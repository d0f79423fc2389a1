"""Options of the UR5 driver (`--robot ur5 --robot-host H`, or a TOML table)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from drivers.errors import DriverConfigError
from drivers.ur.program import ProgramParams


@dataclass(frozen=True)
class UR5Config:
    host: str = ""
    name: str = "ur5"
    rtde_port: int = 30004
    dashboard_port: int = 29999
    script_port: int = 30002
    #: RTDE output rate: up to 125 Hz on CB3, 500 Hz on e-Series.
    frequency: float = 125.0
    #: Bound on connecting (and on the first state) at `async with`.
    connect_timeout: float = 3.0
    #: Without a data packet for this long the link counts as dead and is reopened.
    stale_after: float = 0.5
    reconnect_min: float = 0.1
    reconnect_max: float = 2.0
    #: "servoj" interpolates targets on the robot; "speedj" is the fallback mode.
    control_mode: Literal["servoj", "speedj"] = "servoj"
    lookahead: float = 0.1
    gain: float = 300.0
    #: Largest per-joint distance (rad) the robot accepts between consecutive targets.
    max_jump: float = 0.35
    register_base: int = 24
    #: Our program stops the arm (and says so in its status register) when the driver's
    #: heartbeat arrives slower than this; UR's RTDE watchdog backs it up at half the rate.
    watchdog_hz: float = 2.0
    #: The driver re-sends the inputs at this rate so a slow controller tick never trips it.
    keepalive_hz: float = 25.0
    stop_timeout: float = 0.3
    use_dashboard: bool = True
    power_on: bool = False
    #: Unlock a protective stop that happens while our program runs, after `unlock_wait`,
    #: and restart the program from where the arm is (off by default). It covers the
    #: protective stop only: never an emergency or safeguard stop, never a person's
    #: dashboard/pendant stop, pause or power cycle; those need `UR5Robot.resume()`.
    auto_recover: bool = False
    #: UR refuses to unlock a protective stop sooner than 5 s after it happened.
    unlock_wait: float = 5.0

    def __post_init__(self) -> None:
        if not self.host:
            raise DriverConfigError(
                "UR5Robot: option 'host' is required (e.g. --robot-host 192.168.1.10,"
                " or 127.0.0.1 for `python -m drivers.ur.sim`)"
            )
        # Every number gets a range: a huge timeout or a zero unlock wait is not a
        # tuning choice but a switched-off safeguard (a connect that never ends, an
        # unlock UR refuses), so it is refused here with the option, value and range.
        for name, (lo, lo_open, hi, unit) in _RANGES.items():
            _check_range(name, getattr(self, name), lo, lo_open, hi, unit)
        for name in ("rtde_port", "dashboard_port", "script_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise DriverConfigError(
                    f"UR5Robot: option {name!r} = {port} outside the TCP port range 1..65535"
                )
        if self.reconnect_min > self.reconnect_max:
            raise DriverConfigError(
                f"UR5Robot: option 'reconnect_min' = {self.reconnect_min:g} exceeds"
                f" 'reconnect_max' = {self.reconnect_max:g}; accepted: reconnect_min <="
                " reconnect_max"
            )
        if self.keepalive_hz <= self.watchdog_hz:
            raise DriverConfigError(
                f"UR5Robot: keepalive_hz {self.keepalive_hz} must exceed watchdog_hz"
                f" {self.watchdog_hz}, or the robot's watchdog stops the program"
            )
        self.program  # noqa: B018 - validates the program parameters now, not at connect

    @property
    def program(self) -> ProgramParams:
        try:
            return ProgramParams(
                reg=self.register_base,
                step=1.0 / max(self.frequency, 125.0),
                lookahead=self.lookahead,
                gain=self.gain,
                max_jump=self.max_jump,
                watchdog_hz=self.watchdog_hz,
            )
        except DriverConfigError as exc:
            raise DriverConfigError(f"UR5Robot: {exc}") from None


#: option -> (lower bound, lower bound excluded?, upper bound, unit). Upper bounds are
#: where a value stops being a setting and starts disabling a safeguard.
_RANGES: dict[str, tuple[float, bool, float, str]] = {
    "frequency": (1.0, False, 500.0, "Hz"),
    "connect_timeout": (0.0, True, 60.0, "s"),
    "stale_after": (0.0, True, 5.0, "s"),
    "reconnect_min": (0.0, True, 60.0, "s"),
    "reconnect_max": (0.0, True, 60.0, "s"),
    "max_jump": (0.0, True, 1.0, "rad"),
    "watchdog_hz": (0.5, False, 50.0, "Hz"),
    "keepalive_hz": (1.0, False, 500.0, "Hz"),
    "stop_timeout": (0.0, True, 5.0, "s"),
    "unlock_wait": (5.0, False, 60.0, "s"),
}


def _check_range(name: str, value: float, lo: float, lo_open: bool, hi: float, unit: str) -> None:
    """One-line DriverConfigError naming the option, the value and the accepted range."""
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        accepted = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]{' ' + unit if unit else ''}"
        raise DriverConfigError(
            f"UR5Robot: option {name!r} = {value!r} outside the accepted range {accepted}"
        )
