"""Options of a WHEP camera (`whep+http://host:8889/wrist/whep` plus TOML options)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from drivers.errors import DriverConfigError
from drivers.webrtc.rtcp_clock import SenderClock


@dataclass(frozen=True, slots=True)
class WhepCameraConfig:
    """`url` is the WHEP endpoint; `name` defaults to the path segment before `/whep`.

    `ice_servers` is empty unless configured: aiortc would otherwise contact a
    public STUN server. `watchdog_s` without a frame makes the camera stale and
    starts a reconnect (with backoff from `backoff_s` doubling up to
    `backoff_max_s`); `connect_timeout_s` bounds one attempt up to its first frame.
    """

    url: str = ""
    name: str | None = None
    token: str | None = None
    watchdog_s: float = 2.0
    connect_timeout_s: float = 10.0
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    sender_clock: SenderClock = "auto"
    ice_servers: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DriverConfigError(
                f"WHEP url {self.url!r} must be http(s)://host[:port]/path, "
                "e.g. whep+http://cam-host:8889/wrist/whep"
            )
        for key in ("watchdog_s", "connect_timeout_s", "backoff_s", "backoff_max_s"):
            if not getattr(self, key) > 0:
                raise DriverConfigError(f"{key} must be > 0, got {getattr(self, key)!r}")

    def camera_name(self) -> str:
        if self.name:
            return self.name
        segments = [s for s in urlsplit(self.url).path.split("/") if s]
        if segments and segments[-1].lower() == "whep":
            segments = segments[:-1]
        return segments[-1] if segments else urlsplit(self.url).hostname or "whep"
