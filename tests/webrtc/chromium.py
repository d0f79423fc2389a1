"""Headless Chromium as a WHIP publisher: a real peer written by someone else."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

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
        CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", url,
        stdout=log, stderr=log,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
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
