"""Headless Chromium as a WHIP publisher: a real peer written by someone else."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # offer 127.0.0.1 host candidates too: the tests use loopback only
    "--allow-loopback-in-peer-connection",
    "--enable-logging=stderr",
    "--v=0",
)


def missing_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (run .ci/install-chromium as root)"
    return None


@contextlib.asynccontextmanager
async def chromium(url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run Chromium on `url` until the block exits; its log goes to a temp file."""
    profile = tempfile.mkdtemp(prefix="chromium-whip-")
    log = tempfile.NamedTemporaryFile(prefix="chromium-whip-", suffix=".log", delete=False)
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        url,
        stdout=log,
        stderr=log,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    proc.profile = profile  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
        await asyncio.to_thread(_cleanup, log.name, profile)


def _cleanup(log_path: str, profile: str) -> None:
    Path(log_path).unlink(missing_ok=True)
    shutil.rmtree(profile, ignore_errors=True)


def log_tail(proc: asyncio.subprocess.Process, lines: int = 40) -> str:
    with contextlib.suppress(OSError, AttributeError):
        text = Path(proc.log_path).read_text(errors="replace").splitlines()  # type: ignore[attr-defined]
        return "\n".join(text[-lines:])
    return ""


async def evaluate(proc: asyncio.subprocess.Process, expression: str, within: float = 20) -> Any:
    """Evaluate JavaScript in Chromium's page over the DevTools protocol; its value.

    This is how a test types into the page (a password field, a click), as a
    user would, without chromedriver: `--remote-debugging-port=0` makes
    Chromium write its port into the profile's `DevToolsActivePort`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    port_file = Path(proc.profile) / "DevToolsActivePort"  # type: ignore[attr-defined]
    while True:
        text = await asyncio.to_thread(_read, port_file)
        if text and text.split():
            port = int(text.split()[0])
            break
        if loop.time() > deadline:
            raise AssertionError("Chromium never wrote DevToolsActivePort")
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"]) as ws:
            await ws.send_json(
                {
                    "id": 1,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
            async with asyncio.timeout(max(1.0, deadline - loop.time())):
                async for msg in ws:
                    data = msg.json()
                    if data.get("id") == 1:
                        result = data.get("result", {})
                        if "exceptionDetails" in result:
                            raise AssertionError(f"page raised: {result['exceptionDetails']}")
                        return result.get("result", {}).get("value")
    raise AssertionError("DevTools closed the connection without an answer")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
