"""The simulator's own RTDE codec, written apart from `drivers.ur.rtde_codec`.

It is the controller's side of the protocol (decode requests, encode
replies and data) and deliberately shares no code with the client's codec,
so that a mistake in one shows up as a disagreement with the other.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

V, v, M, U, O, I, S, P = (ord(c) for c in "VvMUOISP")  # noqa: E741

# type name -> (format for one value, number of scalars)
_FORMATS = {
    "BOOL": (">?", 1),
    "UINT8": (">B", 1),
    "UINT32": (">I", 1),
    "UINT64": (">Q", 1),
    "INT32": (">i", 1),
    "DOUBLE": (">d", 1),
    "VECTOR3D": (">3d", 3),
    "VECTOR6D": (">6d", 6),
    "VECTOR6INT32": (">6i", 6),
    "VECTOR6UINT32": (">6I", 6),
}


class SimProtocolError(Exception):
    """A client sent something the simulated controller cannot read."""


def frame(kind: int, body: bytes = b"") -> bytes:
    n = len(body) + 3
    return n.to_bytes(2, "big") + kind.to_bytes(1, "big") + body


def split_stream(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Pops every complete packet off the front of `buffer`."""
    packets = []
    while len(buffer) >= 3:
        n = int.from_bytes(buffer[0:2], "big")
        if n < 3:
            raise SimProtocolError(f"packet size {n} below header size")
        if len(buffer) < n:
            break
        packets.append((buffer[2], bytes(buffer[3:n])))
        del buffer[:n]
    return packets


@dataclass
class SimRecipe:
    rid: int
    names: list[str]
    kinds: list[str]

    def size(self) -> int:
        return sum(struct.calcsize(_FORMATS[k][0]) for k in self.kinds)

    def pack(self, values: list[Any], with_id: bool) -> bytes:
        parts = [bytes([self.rid])] if with_id else []
        for kind, value in zip(self.kinds, values, strict=True):
            fmt, count = _FORMATS[kind]
            parts.append(struct.pack(fmt, *(value if count > 1 else (value,))))
        return frame(U, b"".join(parts))

    def unpack(self, body: bytes) -> dict[str, Any]:
        if not body or body[0] != self.rid:
            raise SimProtocolError(f"data for recipe {body[:1]!r}, expected {self.rid}")
        pos, out = 1, {}
        for name, kind in zip(self.names, self.kinds, strict=True):
            fmt, count = _FORMATS[kind]
            width = struct.calcsize(fmt)
            if pos + width > len(body):
                raise SimProtocolError(f"input data too short for {name}")
            vals = struct.unpack(fmt, body[pos : pos + width])
            out[name] = vals[0] if count == 1 else list(vals)
            pos += width
        if pos != len(body):
            raise SimProtocolError(f"input data has {len(body) - pos} trailing bytes")
        return out


def read_protocol_request(body: bytes) -> int:
    if len(body) != 2:
        raise SimProtocolError("V request must carry a uint16")
    return int.from_bytes(body, "big")


def read_output_setup(body: bytes, protocol: int) -> tuple[float, list[str]]:
    frequency = 125.0
    if protocol >= 2:
        if len(body) < 8:
            raise SimProtocolError("O request too short for its frequency")
        (frequency,) = struct.unpack(">d", body[:8])
        body = body[8:]
    return frequency, [n.strip() for n in body.decode("ascii", "replace").split(",") if n.strip()]


def read_input_setup(body: bytes) -> list[str]:
    return [n.strip() for n in body.decode("ascii", "replace").split(",") if n.strip()]


def setup_reply(rid: int | None, kinds: list[str]) -> bytes:
    head = b"" if rid is None else bytes([rid])
    return head + ",".join(kinds).encode("ascii")


def text_message(message: str, source: str, level: int, protocol: int) -> bytes:
    if protocol < 2:
        return frame(M, bytes([level]) + message.encode())
    m, s = message.encode()[:255], source.encode()[:255]
    return frame(M, bytes([len(m)]) + m + bytes([len(s)]) + s + bytes([level]))


def version_reply(version: tuple[int, int, int, int]) -> bytes:
    return frame(v, b"".join(x.to_bytes(4, "big") for x in version))


def flag(kind: int, ok: bool) -> bytes:
    return frame(kind, b"\x01" if ok else b"\x00")
