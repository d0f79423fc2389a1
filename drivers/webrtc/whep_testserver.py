"""A WHEP endpoint that behaves like MediaMTX's, serving a painted test stream.

It is the source the WHEP camera is tested against (the tests under
tests/webrtc and the fault matrix `controller.fault_matrix_webrtc`), so it
lives beside the drivers rather than among the tests: a tool must not import
tests.

Like MediaMTX: `POST /<path>/whep` with `application/sdp` -> `201`,
`Content-Type: application/sdp`, an `ETag`, and a *relative* `Location`
(`/<path>/whep/<session uuid>`) that takes `PATCH` and `DELETE`; `400` for a
bad offer, `404` for an unknown path or session, `401` for a wrong token.
`/moved/whep` answers `307` to the real path, to exercise redirects.

Runs in-process (`WhepTestServer`) or as a process that a test can SIGKILL:
`python -m drivers.webrtc.whep_testserver PORT [PATH]` prints `ready PORT`.

It can also misbehave as a hostile or broken server would: `script` lists
what the next POSTs get instead of a proper answer (see `MISBEHAVIOURS`),
`broken` makes every POST misbehave (in turn) until it is emptied,
`paused` stops the frames while every peer connection stays up (a camera
that froze behind a live media server), `drop_sessions()` closes every peer
connection (a server restart), `redirect_to` sends `/moved/whep` to an
absolute URL (another origin), `location_base` puts session Locations on
another origin, and `requests` records every request with its Authorization
header, so a test can assert where a token went.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import av
from aiohttp import web

from drivers.webrtc import ice
from drivers.webrtc.paint import PaintedTrack

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

#: What `WhepTestServer.script` / `broken` entries make a POST answer.
MISBEHAVIOURS = (
    "non_utf8_error",  # 500 with a body that is not UTF-8
    "garbage_answer",  # 201 whose SDP makes aiortc raise an AssertionError
    "non_utf8_answer",  # 201 application/sdp that is not UTF-8
    "huge_error",  # 500 with a 60 MB body (Content-Length)
    "huge_answer",  # 201 application/sdp, 60 MB, chunked
    "not_found",  # 404: MediaMTX's answer while nobody publishes on the path
)
HUGE = 60 * 1024 * 1024


class PausableTrack(PaintedTrack):
    """A painted track that drops its frames while `paused()` says so.

    Frames are still painted and paced while paused, so the RTP clock keeps
    running with real time as a real camera's does: a receiver's capture
    times stay right when the frames come back.
    """

    def __init__(
        self, paused: Callable[[], bool], fps: float, width: int = 640, height: int = 480
    ) -> None:
        super().__init__(fps, width, height)
        self._paused = paused

    async def recv(self) -> av.VideoFrame:
        while True:
            frame = await super().recv()
            if not self._paused():
                return frame


class WhepTestServer:
    """The server; `start()` it on a loop, `stop()` it on the same loop."""

    def __init__(
        self,
        path: str = "wrist",
        *,
        token: str | None = None,
        fps: float = 30,
        size: tuple[int, int] = (640, 480),
    ) -> None:
        self.path = path
        self.token = token
        self.fps = fps
        self.size = size
        self.sessions: dict[str, Any] = {}
        self.posts = 0
        self.deletes = 0
        self.script: list[str] = []
        #: while not empty, every POST gets the next of these, in turn
        self.broken: tuple[str, ...] = ()
        self.paused = False
        self.redirect_to: str | None = None
        self.location_base: str | None = None
        #: (method, path, Authorization header or None) of every request
        self.requests: list[tuple[str, str, str | None]] = []
        #: what each POST to the stream's path got: "answer" or a misbehaviour's name
        self.served: list[str] = []
        self.huge_bytes_sent = 0
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers.get("Authorization")))
        return await handler(request)

    def authorizations(self) -> list[str]:
        return [a for _, _, a in self.requests if a is not None]

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/{path}/whep", self._post)
        app.router.add_patch("/{path}/whep/{sid}", self._patch)
        app.router.add_delete("/{path}/whep/{sid}", self._delete)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.path}/whep"

    async def drop_sessions(self) -> int:
        """Close every peer connection at once, as a crashed or restarted server does."""
        pcs, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(pc.close() for pc in pcs))
        return len(pcs)

    async def stop(self) -> None:
        await self.drop_sessions()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _track(self) -> PaintedTrack:
        width, height = self.size
        return PausableTrack(lambda: self.paused, self.fps, width, height)

    async def _answer(self, request: web.Request) -> RTCPeerConnection:
        """A peer connection that answers the request's offer with our track (closed, and the
        error raised, when the offer cannot be answered). aiortc is imported on first use."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(ice.rtc_configuration())
        try:
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=await request.text(), type="offer")
            )
            pc.addTrack(self._track())
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            raise
        return pc

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["path"] == "moved":
            target = self.redirect_to or f"/{self.path}/whep"
            return web.Response(status=307, headers={"Location": target})
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="unauthorized")
        if request.match_info["path"] != self.path:
            return web.Response(status=404, text="no stream is available on path")
        if request.content_type != "application/sdp":
            return web.Response(status=400, text="invalid SDP")
        self.posts += 1
        how = self.script.pop(0) if self.script else None
        if how is None and self.broken:
            how = self.broken[next(self._turn) % len(self.broken)]
        self.served.append(how or "answer")
        if how is not None:
            return await self._misbehave(request, how)
        try:
            pc = await self._answer(request)
        except Exception as exc:
            return web.Response(status=400, text=f"invalid SDP: {exc}")
        sid = str(uuid.uuid4())
        self.sessions[sid] = pc
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={
                "Location": f"{self.location_base or ''}/{self.path}/whep/{sid}",
                "ETag": '"*"',
                "Accept-Patch": "application/trickle-ice-sdpfrag",
            },
        )

    async def _misbehave(self, request: web.Request, how: str) -> web.StreamResponse:
        if how == "non_utf8_error":
            return web.Response(status=500, body=b"\xff\xfe broken \x80\xc3(")
        if how == "not_found":
            return web.Response(status=404, text="no stream is available on path")
        if how == "non_utf8_answer":
            return web.Response(
                status=201,
                body=b"v=0\r\n\xff\xfe\r\n",
                content_type="application/sdp",
                headers={"Location": f"/{self.path}/whep/x"},
            )
        if how == "garbage_answer":
            pc = await self._answer(request)
            try:
                lines = pc.localDescription.sdp.split("\r\n")
            finally:
                await pc.close()
            # half an m= line: aiortc's parser fails with an AssertionError
            garbled = [ln[: len(ln) // 2] if ln.startswith("m=") else ln for ln in lines]
            return web.Response(
                status=201,
                text="\r\n".join(garbled),
                content_type="application/sdp",
                headers={"Location": f"/{self.path}/whep/x"},
            )
        if how in ("huge_error", "huge_answer"):
            resp = web.StreamResponse(status=500 if how == "huge_error" else 201)
            if how == "huge_error":
                resp.content_length = HUGE
                resp.content_type = "text/plain"
            else:
                resp.content_type = "application/sdp"
                resp.headers["Location"] = f"/{self.path}/whep/x"
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = b"x" * 65536
            try:
                for _ in range(HUGE // len(chunk)):
                    await resp.write(chunk)
                    self.huge_bytes_sent += len(chunk)
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client hung up, as it should
            return resp
        raise ValueError(f"unknown misbehaviour {how!r} (one of {MISBEHAVIOURS})")

    async def _patch(self, request: web.Request) -> web.Response:
        if request.match_info["sid"] not in self.sessions:
            return web.Response(status=404, text="session not found")
        return web.Response(status=204)

    async def _delete(self, request: web.Request) -> web.Response:
        pc = self.sessions.pop(request.match_info["sid"], None)
        if pc is None:
            return web.Response(status=404, text="session not found")
        self.deletes += 1
        await pc.close()
        return web.Response(status=200)


async def _serve(port: int, path: str) -> None:
    with ice.host_addresses(["127.0.0.1"]):
        server = WhepTestServer(path)
        await server.start(port)
        print(f"ready {server.port}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2 or not args[0].isdigit():
        sys.exit("usage: python -m drivers.webrtc.whep_testserver PORT [PATH]")
    asyncio.run(_serve(int(args[0]), args[1] if len(args) > 1 else "wrist"))


if __name__ == "__main__":
    main()
