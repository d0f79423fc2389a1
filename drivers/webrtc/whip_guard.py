"""What stands between the network and the WHIP server's sessions.

Any local process, and any web page a local browser opens (through DNS
rebinding: a hostile name that resolves to 127.0.0.1), can reach a WHIP
server bound to loopback. The guards here decide, before any peer connection
exists, whether a request may touch a camera at all:

- `HostPolicy`: the `Host` header must name this server (its bound address
  and port, a loopback name for a loopback bind, or a configured
  `allowed_hosts` name) and an `Origin`, when present, must be one of those
  too. A rebinding page sends its own name in both, so it is refused.
- `RateLimiter`: a token bucket per client address for requests that create
  sessions, so that a flood costs a few peer connections, not hundreds.
- Tokens: compared in constant time as bytes (any header bytes, never a 500),
  identified in logs only by a fingerprint, and kept in a file readable by
  its owner only when generated.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from drivers.errors import DriverConfigError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Longest token accepted from a file or an option; a token is a header value.
MAX_TOKEN_CHARS = 1024


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` as (lower-case name, port or None); None if malformed."""
    value = value.strip()
    if not value or any(c.isspace() or c in "/?#@\\" for c in value):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or _ip(value[1:end]) is None:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text_raw = value.partition(":")
        if ":" in port_text_raw:
            return None  # a bare IPv6 address without brackets is not a Host value
        port_text = port_text_raw if sep else None
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        port = int(port_text)
    name = name.lower().rstrip(".")
    return (name, port) if name else None


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which `Host` and `Origin` values name this server.

    `bind` is the address the server listens on and `port` a callable giving
    the port actually bound (0 may have been asked). An `allowed_hosts`
    entry `name` matches that name on any port (a reverse proxy may present
    another one); `name:port` matches that port only. For a wildcard bind
    any IP literal on the bound port is accepted: a rebinding attack needs a
    host *name*, and the server cannot list every address the machine has.
    """

    bind: str
    port: Callable[[], int]
    allowed_hosts: tuple[str, ...] = ()

    @staticmethod
    def validate(entries: Iterable[str]) -> tuple[str, ...]:
        """Normalised `allowed_hosts`, or a `DriverConfigError` naming a bad entry."""
        out = []
        for entry in entries:
            parsed = split_host(entry) if isinstance(entry, str) else None
            if parsed is None or parsed[0] == "*":
                raise DriverConfigError(
                    f"allowed_hosts entry {entry!r} is not a host name or host:port "
                    "(e.g. robot-pc.local or robot-pc.local:8080)"
                )
            name, port = parsed
            shown = f"[{name}]" if ":" in name else name
            out.append(shown if port is None else f"{shown}:{port}")
        return tuple(out)

    def _names(self) -> list[tuple[str, int | None]]:
        port = self.port()
        names: list[tuple[str, int | None]] = []
        for entry in self.allowed_hosts:
            parsed = split_host(entry)
            if parsed is not None:
                names.append(parsed)
        if is_loopback(self.bind):
            names += [(n, port) for n in (*LOOPBACK_NAMES, self.bind.lower())]
        elif is_wildcard(self.bind):
            names += [(n, port) for n in LOOPBACK_NAMES]
        else:
            names.append((self.bind.lower(), port))
        return names

    def allows(self, name: str, port: int) -> bool:
        if is_wildcard(self.bind) and _ip(name) is not None and port == self.port():
            return True
        return any(n == name and (p is None or p == port) for n, p in self._names())

    def describe(self) -> str:
        shown = []
        for n, p in self._names():
            host = f"[{n}]" if ":" in n else n
            shown.append(host if p is None else f"{host}:{p}")
        if is_wildcard(self.bind):
            shown.append(f"any IP address:{self.port()}")
        return ", ".join(dict.fromkeys(shown))

    def check(self, host: str | None, origin: str | None) -> str | None:
        """None if the request may proceed, else the one-line reason for a 403."""
        if host is None:
            return "request has no Host header"
        parsed = split_host(host)
        if parsed is None:
            return f"malformed Host header {host[:80]!r}"
        name, port = parsed
        if not self.allows(name, 80 if port is None else port):
            return (
                f"Host {host[:80]!r} does not name this server (accepted: {self.describe()}; "
                "add a name with the allowed_hosts option)"
            )
        if origin is None:
            return None
        try:
            parts = urlsplit(origin)
            o_port = parts.port
        except ValueError:
            return f"malformed Origin header {origin[:80]!r}"
        o_name = (parts.hostname or "").rstrip(".")
        if parts.scheme not in ("http", "https") or not o_name or parts.path not in ("", "/"):
            return f"Origin {origin[:80]!r} is not an http(s) origin of this server"
        if o_port is None:
            o_port = 443 if parts.scheme == "https" else 80
        if not self.allows(o_name, o_port):
            return (
                f"Origin {origin[:80]!r} is not this server (a page from another site may not "
                "publish here; add its name with the allowed_hosts option)"
            )
        return None


class RateLimiter:
    """A token bucket per client address: `burst` requests at once, `rate` per second after.

    Buckets that refilled completely are forgotten, and the table never holds
    more than `max_clients` entries, so a spray of addresses cannot grow memory.
    """

    def __init__(
        self, burst: int, rate: float, clock: Callable[[], float], max_clients: int = 4096
    ) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0.0 if a request from `key` may proceed now, else the seconds until one may."""
        now = self.clock()
        level, last = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level >= 1.0:
            self._store(key, level - 1.0, now)
            return 0.0
        self._store(key, level, now)
        return (1.0 - level) / self.rate

    def _store(self, key: str, level: float, now: float) -> None:
        self._buckets[key] = (level, now)
        if len(self._buckets) > self.max_clients:
            full = [
                k
                for k, (lv, t) in self._buckets.items()
                if lv + (now - t) * self.rate >= self.burst
            ]
            for k in full:
                del self._buckets[k]
            while len(self._buckets) > self.max_clients:  # the oldest entries go first
                del self._buckets[next(iter(self._buckets))]


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# ---------------------------------------------------------------------- tokens


def fingerprint(token: str) -> str:
    """What the logs show of a token: enough to tell two apart, useless to an attacker."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _as_bytes(text: str) -> bytes:
    # header values arrive decoded with surrogateescape; any other lone
    # surrogate still has to become bytes rather than an exception
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token`, compared in constant time.

    `hmac.compare_digest` on two `str` raises `TypeError` unless both are
    ASCII; comparing bytes accepts whatever a client sent.
    """
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(_as_bytes(given.strip()), _as_bytes(token))


def check_token_text(token: str, what: str) -> str:
    """A token must be sendable as a header value: visible ASCII, no spaces."""
    if not token:
        raise DriverConfigError(f"{what} is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise DriverConfigError(f"{what} is longer than {MAX_TOKEN_CHARS} characters")
    if not all("!" <= c <= "~" for c in token):
        raise DriverConfigError(
            f"{what} must be visible ASCII characters without spaces "
            "(it travels in an HTTP Authorization header)"
        )
    return token


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token kept in `path`: read it, or generate one there (mode 0600).

    Returns (token, created). An existing file must be a regular file that
    only its owner can read or write, as for an SSH key; it is never
    overwritten. Blocking file I/O: call it off the event loop.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_token_file(path), False
    except OSError as exc:
        raise DriverConfigError(f"token_file {str(path)!r}: {exc.strerror or exc}") from None
    token = secrets.token_urlsafe(24)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise DriverConfigError(f"token_file {str(path)!r}: {exc.strerror or exc}") from None
    return token, True


def _read_token_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise DriverConfigError(f"token_file {str(path)!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DriverConfigError(f"token_file {str(path)!r} is not a regular file")
        if st.st_mode & 0o077:
            raise DriverConfigError(
                f"token_file {str(path)!r} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it"
            )
        raw = f.read(MAX_TOKEN_CHARS + 2)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DriverConfigError(f"token_file {str(path)!r} is not ASCII text") from None
    return check_token_text(text, f"the token in token_file {str(path)!r}")
