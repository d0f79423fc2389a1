"""Options of a WHIP camera (`whip://HOST:PORT/NAME` plus TOML options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.errors import DriverConfigError
from drivers.webrtc.rtcp_clock import SenderClock
from drivers.webrtc.whip_guard import HostPolicy, check_token_text, is_loopback

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_WATCHDOG_S = 60.0
MAX_CONNECT_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class WhipCameraConfig:
    """`address` is the spec's target: `HOST:PORT/NAME`, `HOST:PORT/whip/NAME` or `NAME`.

    The server binds to 127.0.0.1 unless the address names another host; a
    server reachable beyond loopback requires a bearer token (`token`, or
    `token_file`: read from that file, or generated into it with mode 0600)
    unless `auth = false`. Requests must name the server in their Host (and
    Origin) header: its address, a loopback name for a loopback bind, or one
    of `allowed_hosts` (DNS-rebinding defence).

    One publisher at a time: while one is live, another gets 409 unless
    `allow_takeover` is set and it sends the token (so takeover needs a
    token); even then it replaces the live one only once it has connected.
    A new publisher must connect and deliver a first frame within
    `connect_timeout_s`, else its session is closed.
    """

    address: str = "front"
    name: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line
    token_file: str | None = None
    auth: bool | None = None
    allowed_hosts: tuple[str, ...] = ()
    allow_takeover: bool = False
    watchdog_s: float = 2.0
    connect_timeout_s: float = 10.0
    sender_clock: SenderClock = "auto"
    ice_servers: tuple[str, ...] = ()
    ice_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # bounded both ways: a huge watchdog would switch the staleness check off
        if not 0 < self.watchdog_s <= MAX_WATCHDOG_S:
            raise DriverConfigError(
                f"watchdog_s must be > 0 and <= {MAX_WATCHDOG_S:g}, got {self.watchdog_s!r}"
            )
        if not 0 < self.connect_timeout_s <= MAX_CONNECT_TIMEOUT_S:
            raise DriverConfigError(
                f"connect_timeout_s must be > 0 and <= {MAX_CONNECT_TIMEOUT_S:g}, "
                f"got {self.connect_timeout_s!r}"
            )
        if self.token is not None:
            check_token_text(self.token, "the token option")
        if self.token_file is not None and not self.token_file.strip():
            raise DriverConfigError("token_file must be a path, got an empty string")
        HostPolicy.validate(self.allowed_hosts)
        host, _, _ = self.parts()
        has_token = bool(self.token or self.token_file)
        protected = self.auth is not False and has_token
        needs = self.auth is True or (self.auth is None and not is_loopback(host))
        if needs and not has_token:
            where = "beyond loopback" if not is_loopback(host) else "with auth=true"
            raise DriverConfigError(
                f"WHIP camera on {host} accepts publishers {where} and needs a bearer "
                "token: set the token option, or token_file=PATH to have one generated into a "
                "file only you can read (auth=false turns this off, on a network you trust)"
            )
        if self.allow_takeover and not protected:
            raise DriverConfigError(
                "allow_takeover needs a token (token or token_file): without one any local "
                "process could take the camera over"
            )

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
