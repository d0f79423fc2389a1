"""A WHEP endpoint that behaves like MediaMTX's, serving a painted test stream.

Like MediaMTX: `POST /<path>/whep` with `application/sdp` -> `201`,
`Content-Type: application/sdp`, an `ETag`, and a *relative* `Location`
(`/<path>/whep/<session uuid>`) that takes `PATCH` and `DELETE`; `400` for a
bad offer, `404` for an unknown path or session, `401` for a wrong token.
`/moved/whep` answers `307` to the real path, to exercise redirects.

Runs in-process (`WhepFixture`) or as a process that a test can SIGKILL:
`python -m tests.webrtc.whep_fixture PORT [PATH]` prints `ready PORT`.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

from aiohttp import web

from drivers.webrtc import ice
from drivers.webrtc.paint import PaintedTrack


class WhepFixture:
    def __init__(self, path: str = "wrist", *, token: str | None = None, fps: float = 30) -> None:
        self.path = path
        self.token = token
        self.fps = fps
        self.sessions: dict[str, Any] = {}
        self.posts = 0
        self.deletes = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        app = web.Application()
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

    async def stop(self) -> None:
        await asyncio.gather(*(pc.close() for pc in self.sessions.values()))
        self.sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _post(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        if request.match_info["path"] == "moved":
            return web.Response(status=307, headers={"Location": f"/{self.path}/whep"})
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="unauthorized")
        if request.match_info["path"] != self.path:
            return web.Response(status=404, text="no stream is available on path")
        if request.content_type != "application/sdp":
            return web.Response(status=400, text="invalid SDP")
        self.posts += 1
        pc = RTCPeerConnection(ice.rtc_configuration())
        try:
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=await request.text(), type="offer"))
            pc.addTrack(PaintedTrack(self.fps))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            return web.Response(status=400, text=f"invalid SDP: {exc}")
        sid = str(uuid.uuid4())
        self.sessions[sid] = pc
        return web.Response(
            status=201, text=pc.localDescription.sdp, content_type="application/sdp",
            headers={"Location": f"/{self.path}/whep/{sid}", "ETag": '"*"',
                     "Accept-Patch": "application/trickle-ice-sdpfrag"})

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
        fixture = WhepFixture(path)
        await fixture.start(port)
        print(f"ready {fixture.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "wrist"))
