"""ICE helpers: offline configuration and the loopback host-candidate workaround.

aioice never offers 127.0.0.1 as a host candidate, so two peers on a
loopback-only machine (a CI container, a robot cell with no network up yet)
never form a pair. `host_addresses(...)` replaces aioice's host-address
discovery for as long as it is active; it is process-wide, so it is used
only by tests or when a driver is given the explicit `ice_addresses` option.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

_lock = threading.Lock()
_stack: list[tuple[str, ...]] = []
_original: Any = None


def rtc_configuration(ice_servers: Sequence[str] = ()) -> Any:
    """An `RTCConfiguration` with exactly the given STUN/TURN URLs.

    aiortc's default (`iceServers=None`) contacts a public STUN server; an
    offline controller must pass an empty list.
    """
    from aiortc import RTCConfiguration, RTCIceServer

    return RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in ice_servers])


def _patched(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _stack[-1] if _stack else ()
    return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]


def install(addresses: Sequence[str]) -> None:
    """Make aioice gather host candidates on exactly `addresses` (nestable)."""
    import aioice.ice

    global _original
    with _lock:
        if not _stack:
            _original = aioice.ice.get_host_addresses
            aioice.ice.get_host_addresses = _patched
        _stack.append(tuple(addresses))


def uninstall() -> None:
    import aioice.ice

    global _original
    with _lock:
        if not _stack:
            return
        _stack.pop()
        if not _stack and _original is not None:
            aioice.ice.get_host_addresses = _original
            _original = None


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str] = ("127.0.0.1",)) -> Iterator[None]:
    """Within this block, aioice gathers host candidates only on `addresses`."""
    install(addresses)
    try:
        yield
    finally:
        uninstall()
