"""Reading HTTP responses from servers we do not control, and where a token may go.

A WHEP or WHIP server's answer is untrusted input: its body may be huge,
not UTF-8, or never end, and its `Location` or redirect may point anywhere.
Bodies are read in chunks and abandoned beyond a cap (the connection is
closed rather than drained), decoded with replacement characters, and a
bearer token is sent only to the origin (scheme, host, port) it was
configured for.
"""

from __future__ import annotations

from typing import Any

from yarl import URL

#: An SDP answer is a few KiB; a browser's, with every codec, under 16 KiB.
MAX_ANSWER_BYTES = 64 * 1024
#: What is kept of an error body: enough for the server's reason.
MAX_ERROR_BYTES = 4 * 1024
#: What an error body contributes to a log line.
ERROR_SHOWN_CHARS = 200


class BodyTooLarge(Exception):
    """The body exceeded its cap; nothing beyond the cap was read."""


async def read_capped(resp: Any, cap: int) -> bytes:
    """The whole body of an aiohttp response, or `BodyTooLarge` past `cap` bytes.

    A declared `Content-Length` beyond the cap is refused before reading.
    On `BodyTooLarge` the response is closed, so the rest is never received.
    """
    if resp.content_length is not None and resp.content_length > cap:
        resp.close()
        raise BodyTooLarge(f"{resp.content_length} bytes declared")
    buf = bytearray()
    while True:
        chunk = await resp.content.read(cap + 1 - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > cap:
            resp.close()
            raise BodyTooLarge(f"more than {cap} bytes")


async def error_excerpt(resp: Any) -> str:
    """The start of an error body as one printable line; the rest is not read."""
    buf = bytearray()
    while len(buf) < MAX_ERROR_BYTES:
        chunk = await resp.content.read(MAX_ERROR_BYTES - len(buf))
        if not chunk:
            break
        buf += chunk
    else:
        resp.close()  # do not drain what may be megabytes
    return one_line(buf.decode("utf-8", errors="replace"))


def one_line(text: str, limit: int = ERROR_SHOWN_CHARS) -> str:
    """Whitespace collapsed, control characters made visible, at most `limit` characters."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port with defaults filled in) of an absolute http(s) URL, else None."""
    try:
        u = URL(url)
    except (ValueError, TypeError):
        return None
    if u.scheme not in ("http", "https") or not u.host:
        return None
    return u.scheme, u.host.lower().rstrip("."), u.port


def same_origin(a: str, b: str) -> bool:
    """Whether two absolute URLs share scheme, host and port (a token may travel between them)."""
    oa = origin(a)
    return oa is not None and oa == origin(b)
