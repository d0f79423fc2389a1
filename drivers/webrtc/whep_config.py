"""Options of a WHEP camera (`whep+http://host:8889/wrist/whep` plus TOML options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from drivers.errors import DriverConfigError
from drivers.webrtc.rtcp_clock import SenderClock
from drivers.webrtc.whip_guard import check_token_text

#: Upper bounds of the time options (seconds).
LIMITS_S = {
    "watchdog_s": 60.0,
    "connect_timeout_s": 120.0,
    "backoff_s": 300.0,
    "backoff_max_s": 300.0,
}


@dataclass(frozen=True, slots=True)
class WhepCameraConfig:
    """`url` is the WHEP endpoint; `name` defaults to the path segment before `/whep`.

    `ice_servers` is empty unless configured: aiortc would otherwise contact a
    public STUN server. `watchdog_s` without a frame makes the camera stale and
    starts a reconnect (with backoff from `backoff_s` doubling up to
    `backoff_max_s`); `connect_timeout_s` bounds one attempt up to its first frame.
    `token` is sent only to the origin of `url`.
    """

    url: str = ""
    name: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line
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
        # bounded both ways: a huge watchdog or timeout switches the check off
        for key, most in LIMITS_S.items():
            value = getattr(self, key)
            if not 0 < value <= most:
                raise DriverConfigError(f"{key} must be > 0 and <= {most:g}, got {value!r}")
        if self.backoff_s > self.backoff_max_s:
            raise DriverConfigError(
                f"backoff_s ({self.backoff_s:g}) must not exceed backoff_max_s "
                f"({self.backoff_max_s:g})"
            )
        if self.token is not None:
            check_token_text(self.token, "the token option")

    def camera_name(self) -> str:
        if self.name:
            return self.name
        segments = [s for s in urlsplit(self.url).path.split("/") if s]
        if segments and segments[-1].lower() == "whep":
            segments = segments[:-1]
        return segments[-1] if segments else urlsplit(self.url).hostname or "whep"
