"""The robot-side control program: rendered from `control.script` and sent once to port 30002.

Interpolation runs on the robot at its own step time, so the PC only has to
deliver one target per control tick (~10 Hz) and jitter on the PC side never
reaches the joints. The register map lives in `control.script`'s header and
in the constants below; the two must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from importlib import resources
from string import Template

from drivers.errors import ConnectionLost, DriverConfigError
from drivers.ur import transport

SCRIPT_PORT = 30002

MODE_HOLD, MODE_SERVO, MODE_SPEED, MODE_STOP = 0, 1, 2, 3
STATUS_HOLDING, STATUS_SERVOING, STATUS_REJECTED, STATUS_STOPPED, STATUS_SPEED = 1, 2, 3, 4, 5
#: Written by the program itself when the driver's heartbeat stopped: the one positive proof
#: that a stopped program was stopped by us (our watchdog), so the driver may restart it.
#: Output registers keep their value after a program ends, so it is still readable then.
STATUS_WATCHDOG = 6
STATUS_NAMES = {
    STATUS_HOLDING: "HOLDING",
    STATUS_SERVOING: "SERVOING",
    STATUS_REJECTED: "REJECTED_JUMP",
    STATUS_STOPPED: "STOPPED",
    STATUS_SPEED: "SPEED",
    6: "WATCHDOG",
}


@dataclass(frozen=True, slots=True)
class ProgramParams:
    reg: int = 24
    step: float = 0.008
    lookahead: float = 0.1
    gain: float = 300.0
    max_jump: float = 0.35
    watchdog_hz: float = 5.0
    decel: float = 4.0
    accel: float = 2.0

    def __post_init__(self) -> None:
        # UR's documented ranges for servoj; registers 24..47 hold 13 doubles from reg.
        if not 0.03 <= self.lookahead <= 0.2:
            raise DriverConfigError(f"servoj lookahead {self.lookahead} outside UR's 0.03..0.2 s")
        if not 100 <= self.gain <= 2000:
            raise DriverConfigError(f"servoj gain {self.gain} outside UR's 100..2000")
        if not 24 <= self.reg <= 47 - 12:
            raise DriverConfigError(
                f"register base {self.reg} outside 24..35 (needs 3 ints and 13 doubles)"
            )
        if not 0.001 <= self.step <= 0.1:
            raise DriverConfigError(f"robot step time {self.step} s outside 0.001..0.1")
        if self.max_jump <= 0 or self.watchdog_hz <= 0 or self.decel <= 0 or self.accel <= 0:
            raise DriverConfigError("max_jump, watchdog_hz, decel and accel must be positive")

    @property
    def input_names(self) -> list[str]:
        r = self.reg
        return [f"input_int_register_{r}", f"input_int_register_{r + 1}", self.heartbeat_name] + [
            f"input_double_register_{r + i}" for i in range(13)
        ]

    @property
    def heartbeat_name(self) -> str:
        """Bumped by the driver on every write (keepalives too): the program's watchdog input.

        The sequence number cannot serve: a keepalive repeats it, and URScript can
        only see a register's value, not that it was rewritten.
        """
        return f"input_int_register_{self.reg + 2}"

    @property
    def ack_name(self) -> str:
        return f"output_int_register_{self.reg}"

    @property
    def status_name(self) -> str:
        return f"output_int_register_{self.reg + 1}"

    def inputs(
        self,
        seq: int,
        mode: int,
        target: list[float],
        duration: float,
        qd: list[float] | None = None,
        *,
        heartbeat: int = 0,
    ) -> dict[str, object]:
        r = self.reg
        values: dict[str, object] = {
            f"input_int_register_{r}": seq,
            f"input_int_register_{r + 1}": mode,
            self.heartbeat_name: heartbeat,
            f"input_double_register_{r + 6}": float(duration),
        }
        speeds = qd if qd is not None else [0.0] * 6
        for i in range(6):
            values[f"input_double_register_{r + i}"] = float(target[i])
            values[f"input_double_register_{r + 7 + i}"] = float(speeds[i])
        return values


def render(params: ProgramParams) -> str:
    template = resources.files("drivers.ur").joinpath("control.script").read_text("utf-8")
    return Template(template).substitute(
        reg=params.reg,
        step=repr(params.step),
        lookahead=repr(params.lookahead),
        gain=repr(params.gain),
        max_jump=repr(params.max_jump),
        watchdog_hz=repr(params.watchdog_hz),
        decel=repr(params.decel),
        accel=repr(params.accel),
    )


async def upload(host: str, script: str, *, port: int = SCRIPT_PORT, limit_s: float = 2.0) -> None:
    """Send the program; a new script replaces whatever program the robot was running."""
    try:
        async with asyncio.timeout(limit_s):
            _reader, writer = await transport.open_connection(host, port)
            try:
                writer.write(script.encode("utf-8") + b"\n")
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise ConnectionLost(
            f"UR script port {host}:{port}: cannot send program: {exc!r}"
        ) from None
