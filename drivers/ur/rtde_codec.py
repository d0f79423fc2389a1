"""RTDE packets as pure functions: bytes in, values out, no I/O.

Kept apart from the transport so that it can be fuzzed and round-tripped on
its own, and so that the simulator's separately written codec can check it.
Every failure is a `ProtocolError` naming the packet type and length: a
garbled byte from the robot must never surface as a `struct.error` or an
`IndexError` from deep inside.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drivers.errors import DriverError, ProtocolError

HEADER = struct.Struct(">HB")
MAX_PACKET = 0xFFFF

# Packet types (ASCII letters), from UR's RTDE guide.
REQUEST_PROTOCOL_VERSION = 86  # V
GET_URCONTROL_VERSION = 118  # v
TEXT_MESSAGE = 77  # M
DATA_PACKAGE = 85  # U
SETUP_OUTPUTS = 79  # O
SETUP_INPUTS = 73  # I
START = 83  # S
PAUSE = 80  # P

PACKET_NAMES = {
    REQUEST_PROTOCOL_VERSION: "V (protocol version)",
    GET_URCONTROL_VERSION: "v (controller version)",
    TEXT_MESSAGE: "M (text message)",
    DATA_PACKAGE: "U (data)",
    SETUP_OUTPUTS: "O (setup outputs)",
    SETUP_INPUTS: "I (setup inputs)",
    START: "S (start)",
    PAUSE: "P (pause)",
}

# RTDE type name -> (struct code of one element, element count)
FIELD_TYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("?", 1),
    "UINT8": ("B", 1),
    "UINT32": ("I", 1),
    "UINT64": ("Q", 1),
    "INT32": ("i", 1),
    "DOUBLE": ("d", 1),
    "VECTOR3D": ("d", 3),
    "VECTOR6D": ("d", 6),
    "VECTOR6INT32": ("i", 6),
    "VECTOR6UINT32": ("I", 6),
}

MESSAGE_LEVELS = {0: "EXCEPTION", 1: "ERROR", 2: "WARNING", 3: "INFO"}


class RecipeRefused(DriverError):
    """The controller refused a recipe: a variable is unknown or taken by another client."""


def packet_name(ptype: int) -> str:
    return PACKET_NAMES.get(ptype, f"unknown type {ptype}")


def bad_packet(ptype: int, payload: bytes, why: str) -> ProtocolError:
    return ProtocolError(
        f"RTDE packet {packet_name(ptype)} with {len(payload)}-byte payload "
        f"(size {len(payload) + HEADER.size}): {why}"
    )


@dataclass(frozen=True, slots=True)
class Recipe:
    """A negotiated list of variables with their types and the id the controller gave it."""

    recipe_id: int
    names: tuple[str, ...]
    types: tuple[str, ...]
    layout: struct.Struct
    counts: tuple[int, ...]

    @classmethod
    def build(cls, recipe_id: int, names: Sequence[str], types: Sequence[str]) -> Recipe:
        codes, counts = [], []
        for name, typ in zip(names, types, strict=True):
            if typ not in FIELD_TYPES:
                raise ProtocolError(f"RTDE recipe: variable {name!r} has unsupported type {typ!r}")
            code, count = FIELD_TYPES[typ]
            codes.append(code * count)
            counts.append(count)
        layout = struct.Struct(">" + "".join(codes))
        return cls(recipe_id, tuple(names), tuple(types), layout, tuple(counts))

    def unflatten(self, flat: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        i = 0
        for name, count in zip(self.names, self.counts, strict=True):
            out[name] = flat[i] if count == 1 else tuple(flat[i : i + count])
            i += count
        return out

    def flatten(self, values: dict[str, Any]) -> list[Any]:
        flat: list[Any] = []
        for name, count in zip(self.names, self.counts, strict=True):
            if name not in values:
                raise ValueError(f"RTDE recipe {self.recipe_id}: no value for {name!r}")
            v = values[name]
            if count == 1:
                flat.append(v)
            else:
                if len(v) != count:
                    raise ValueError(f"RTDE variable {name!r} needs {count} values, got {len(v)}")
                flat.extend(v)
        return flat


# -------------------------------------------------------------------- encode


def encode(ptype: int, payload: bytes = b"") -> bytes:
    size = HEADER.size + len(payload)
    if size > MAX_PACKET:
        raise ValueError(f"RTDE packet {packet_name(ptype)} too large: {size} bytes")
    return HEADER.pack(size, ptype) + payload


def encode_request_protocol(version: int) -> bytes:
    return encode(REQUEST_PROTOCOL_VERSION, struct.pack(">H", version))


def encode_get_version() -> bytes:
    return encode(GET_URCONTROL_VERSION)


def encode_setup_outputs(names: Sequence[str], frequency: float, protocol: int) -> bytes:
    text = ",".join(names).encode("ascii")
    if protocol >= 2:
        return encode(SETUP_OUTPUTS, struct.pack(">d", frequency) + text)
    return encode(SETUP_OUTPUTS, text)


def encode_setup_inputs(names: Sequence[str]) -> bytes:
    return encode(SETUP_INPUTS, ",".join(names).encode("ascii"))


def encode_start() -> bytes:
    return encode(START)


def encode_pause() -> bytes:
    return encode(PAUSE)


def encode_data(recipe: Recipe, values: dict[str, Any], *, with_id: bool = True) -> bytes:
    try:
        body = recipe.layout.pack(*recipe.flatten(values))
    except struct.error as exc:
        raise ValueError(f"RTDE recipe {recipe.recipe_id}: cannot pack values: {exc}") from None
    return encode(DATA_PACKAGE, (bytes([recipe.recipe_id]) if with_id else b"") + body)


# -------------------------------------------------------------------- decode


def decode_accepted(ptype: int, payload: bytes) -> bool:
    """Replies to V, S and P: one uint8, nonzero when accepted."""
    if len(payload) != 1:
        raise bad_packet(ptype, payload, "expected exactly 1 byte (accepted flag)")
    return payload[0] != 0


def decode_version(payload: bytes) -> tuple[int, int, int, int]:
    if len(payload) != 16:
        raise bad_packet(GET_URCONTROL_VERSION, payload, "expected 16 bytes (4 x uint32)")
    major, minor, bugfix, build = struct.unpack(">IIII", payload)
    return major, minor, bugfix, build


def decode_setup_reply(
    ptype: int, payload: bytes, names: Sequence[str], *, with_id: bool
) -> Recipe:
    """Reply to O or I: [recipe id] + comma-separated type names.

    A NOT_FOUND or IN_USE type is a refusal (`RecipeRefused`, naming the
    variables); anything else unreadable is a `ProtocolError`.
    """
    if with_id:
        if not payload:
            raise bad_packet(ptype, payload, "missing recipe id")
        recipe_id, text = payload[0], payload[1:]
    else:
        recipe_id, text = 0, payload
    try:
        types = text.decode("ascii").split(",") if text else []
    except UnicodeDecodeError:
        raise bad_packet(ptype, payload, "type list is not ASCII") from None
    if len(types) != len(names):
        raise bad_packet(ptype, payload, f"{len(types)} types for {len(names)} requested variables")
    refused = [
        f"{n} ({t})" for n, t in zip(names, types, strict=True) if t in ("NOT_FOUND", "IN_USE")
    ]
    if refused:
        raise RecipeRefused(f"RTDE {packet_name(ptype)} refused: {', '.join(refused)}")
    unknown = [t for t in types if t not in FIELD_TYPES]
    if unknown:
        raise bad_packet(
            ptype, payload, f"unknown variable type(s) {', '.join(sorted(set(unknown)))}"
        )
    if with_id and recipe_id == 0:
        raise bad_packet(ptype, payload, "recipe id 0 for an accepted recipe")
    return Recipe.build(recipe_id, names, types)


def decode_text(payload: bytes, protocol: int) -> tuple[str, str, str]:
    """-> (level name, source, message)."""
    ptype = TEXT_MESSAGE
    if protocol < 2:
        if not payload:
            raise bad_packet(ptype, payload, "empty text message")
        level, msg = payload[0], payload[1:]
        return MESSAGE_LEVELS.get(level, str(level)), "", msg.decode("utf-8", "replace")
    if len(payload) < 1:
        raise bad_packet(ptype, payload, "missing message length")
    n = payload[0]
    if len(payload) < 1 + n + 1:
        raise bad_packet(ptype, payload, f"message length {n} overruns the packet")
    msg = payload[1 : 1 + n]
    m = payload[1 + n]
    if len(payload) != 1 + n + 1 + m + 1:
        raise bad_packet(ptype, payload, f"source length {m} does not fit the packet")
    src = payload[2 + n : 2 + n + m]
    level = payload[-1]
    return (
        MESSAGE_LEVELS.get(level, str(level)),
        src.decode("utf-8", "replace"),
        msg.decode("utf-8", "replace"),
    )


def decode_data(recipe: Recipe, payload: bytes, *, with_id: bool) -> dict[str, Any]:
    body = payload
    if with_id:
        if not payload:
            raise bad_packet(DATA_PACKAGE, payload, "missing recipe id")
        if payload[0] != recipe.recipe_id:
            raise bad_packet(
                DATA_PACKAGE, payload, f"recipe id {payload[0]}, expected {recipe.recipe_id}"
            )
        body = payload[1:]
    if len(body) != recipe.layout.size:
        raise bad_packet(
            DATA_PACKAGE, payload, f"recipe {recipe.recipe_id} needs {recipe.layout.size} bytes"
        )
    return recipe.unflatten(recipe.layout.unpack(body))


class PacketSplitter:
    """Reassembles packets from a byte stream: one read may hold half a packet or several."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= HEADER.size:
            size, ptype = HEADER.unpack_from(self._buf)
            if size < HEADER.size:
                self._buf.clear()
                raise ProtocolError(
                    f"RTDE packet {packet_name(ptype)} with size {size}: smaller than its header"
                )
            if len(self._buf) < size:
                break
            out.append((ptype, bytes(self._buf[HEADER.size : size])))
            del self._buf[:size]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
