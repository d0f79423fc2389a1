"""Options of a WHIP camera (`whip://HOST:PORT/NAME` plus TOML options)."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.errors import DriverConfigError
from drivers.webrtc.rtcp_clock import SenderClock

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True, slots=True)
class WhipCameraConfig:
    """`address` is the spec's target: `HOST:PORT/NAME`, `HOST:PORT/whip/NAME` or `NAME`.

    The server binds to 127.0.0.1 unless the address names another host; a
    server reachable beyond loopback requires a bearer token (`token`, or one
    generated and logged) unless `auth = false`.
    """

    address: str = "front"
    name: str | None = None
    token: str | None = None
    auth: bool | None = None
    watchdog_s: float = 2.0
    sender_clock: SenderClock = "auto"
    ice_servers: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.watchdog_s > 0:
            raise DriverConfigError(f"watchdog_s must be > 0, got {self.watchdog_s!r}")
        self.parts()

    def parts(self) -> tuple[str, int, str]:
        """(host, port, camera name) from `address` and `name`."""
        text = self.address.strip().strip("/")
        host, port = DEFAULT_HOST, DEFAULT_PORT
        path = text
        if "/" in text or ":" in text.split("/", 1)[0]:
            head, _, path = text.partition("/")
            if head:
                h, sep, p = head.rpartition(":")
                if sep:
                    host = h.strip("[]") or DEFAULT_HOST
                    try:
                        port = int(p)
                    except ValueError:
                        raise DriverConfigError(
                            f"WHIP address {self.address!r}: port {p!r} is not a number"
                        ) from None
                else:
                    host = head
        segments = [s for s in path.split("/") if s]
        name = self.name or (segments[-1] if segments else "")
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise DriverConfigError(
                f"WHIP address {self.address!r}: needs a camera name as its last path "
                "segment (letters, digits, - or _), e.g. 0.0.0.0:8080/front"
            )
        if not 0 <= port < 65536:
            raise DriverConfigError(f"WHIP address {self.address!r}: port out of range")
        return host, port, name
