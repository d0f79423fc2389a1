"""Options of the UR5 driver (`--robot ur5 --robot-host H`, or a TOML table)."""

from __future__ import annotations

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
    #: The robot stops the program when inputs arrive slower than this.
    watchdog_hz: float = 2.0
    #: The driver re-sends the inputs at this rate so a slow controller tick never trips it.
    keepalive_hz: float = 25.0
    stop_timeout: float = 0.3
    use_dashboard: bool = True
    power_on: bool = False
    #: Unlock a protective stop and restart the program on our own (off by default).
    auto_recover: bool = False
    #: UR refuses to unlock a protective stop sooner than 5 s after it happened.
    unlock_wait: float = 5.0

    def __post_init__(self) -> None:
        if not self.host:
            raise DriverConfigError(
                "UR5Robot: option 'host' is required (e.g. --robot-host 192.168.1.10,"
                " or 127.0.0.1 for `python -m drivers.ur.sim`)"
            )
        if not 1 <= self.frequency <= 500:
            raise DriverConfigError(f"UR5Robot: frequency {self.frequency} outside 1..500 Hz")
        for name in ("connect_timeout", "stale_after", "reconnect_min", "reconnect_max",
                     "keepalive_hz", "stop_timeout"):
            if getattr(self, name) <= 0:
                raise DriverConfigError(f"UR5Robot: {name} must be positive, got {getattr(self, name)}")
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
                reg=self.register_base, step=1.0 / max(self.frequency, 125.0),
                lookahead=self.lookahead, gain=self.gain, max_jump=self.max_jump,
                watchdog_hz=self.watchdog_hz,
            )
        except DriverConfigError as exc:
            raise DriverConfigError(f"UR5Robot: {exc}") from None
