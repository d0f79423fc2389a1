"""Test helpers for driver lifecycles: a task with the bug a close must survive."""

from __future__ import annotations

import asyncio


async def stubborn(release: asyncio.Event) -> None:
    """A task that swallows its cancellation (the bug) until `release` is set."""
    while not release.is_set():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            continue


async def end_stubborn(task: asyncio.Task[None], release: asyncio.Event) -> None:
    """Let a `stubborn` task end, so the test leaves nothing running."""
    release.set()
    task.cancel()
    await asyncio.wait({task})
