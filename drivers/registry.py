"""Find drivers (and policies) by name through entry points, loaded lazily.

Built-in drivers are registered exactly like third-party plugins, under the
entry-point group `controller.drivers`, with names `KIND.NAME` (`robot.ur5`,
`camera.whep`). Listing reads only the metadata: a driver whose vendor SDK is
missing never breaks the listing or another driver; it fails, with its own
import error named, only when chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from drivers.errors import DriverConfigError

DRIVER_GROUP = "controller.drivers"
KINDS = ("robot", "camera", "sensor")


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """A parsed spec string: `fake`, `whip://0.0.0.0:8080/front`, `whep+https://h/cam/whep`."""

    kind: str
    name: str
    target: str
    text: str


def parse_spec(kind: str, text: str) -> DriverSpec:
    """Split `NAME`, `NAME:TARGET`, `NAME://TARGET` or `NAME+URL` into name and target.

    `whep+http://host/x` keeps the whole URL as the target; `whip://0.0.0.0:8080/front`
    gives target `0.0.0.0:8080/front`.
    """
    if kind not in KINDS:
        raise DriverConfigError(f"unknown driver kind {kind!r} (accepted: {', '.join(KINDS)})")
    text = text.strip()
    if not text:
        raise DriverConfigError(f"empty {kind} spec (expected NAME or NAME://TARGET)")
    name, target = text, ""
    plus, colon = text.find("+"), text.find(":")
    if plus > 0 and (colon < 0 or plus < colon):
        name, target = text[:plus], text[plus + 1 :]
    elif colon > 0:
        name, target = text[:colon], text[colon + 1 :]
        if target.startswith("//"):
            target = target[2:]
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise DriverConfigError(
            f"bad {kind} spec {text!r}: driver name {name!r} is not a plain name"
        )
    return DriverSpec(kind=kind, name=name.lower(), target=target, text=text)


class PluginRegistry:
    """Entry points of one group, keyed by name, loaded on demand."""

    def __init__(self, group: str) -> None:
        self.group = group

    def _entries(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(self._entries())

    def describe(self) -> dict[str, str]:
        """name -> `module:attr`, without importing anything."""
        return {name: ep.value for name, ep in sorted(self._entries().items())}

    def load(self, name: str, *, what: str) -> Any:
        entries = self._entries()
        ep = entries.get(name)
        if ep is None:
            accepted = ", ".join(sorted(entries)) or "none installed"
            raise DriverConfigError(f"unknown {what} {name!r} (accepted: {accepted})")
        try:
            return ep.load()
        except ImportError as exc:
            raise DriverConfigError(
                f"{what} {name!r} ({ep.value}) cannot be imported: {exc}"
            ) from exc


_drivers = PluginRegistry(DRIVER_GROUP)


def available(kind: str | None = None) -> dict[str, str]:
    """`KIND.NAME -> module:attr` for every installed driver (of one kind if given)."""
    out = _drivers.describe()
    if kind is not None:
        out = {k: v for k, v in out.items() if k.startswith(kind + ".")}
    return out


def driver_class(kind: str, name: str) -> Any:
    accepted = ", ".join(k.split(".", 1)[1] for k in available(kind)) or "none installed"
    if f"{kind}.{name}" not in available(kind):
        raise DriverConfigError(f"unknown {kind} driver {name!r} (accepted: {accepted})")
    return _drivers.load(f"{kind}.{name}", what=f"{kind} driver")


def create(kind: str, spec: str, options: Mapping[str, Any] | None = None) -> Any:
    """Parse `spec`, load the driver class by name and build it with `options`."""
    parsed = parse_spec(kind, spec)
    cls = driver_class(kind, parsed.name)
    from_spec = getattr(cls, "from_spec", None)
    if from_spec is None:
        raise DriverConfigError(f"{kind} driver {parsed.name!r} has no from_spec(target, options)")
    return from_spec(parsed.target, dict(options or {}))
