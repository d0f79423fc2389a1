"""The design note's control loop, built as the note sketches it: the benchmarks' baseline.

../shared/seed/ (the note, "Real-time Inference Without VL Caching") runs
its VL encoder in a plain `threading.Thread` that encodes the newest frame
back to back and `put`s each feature into a `queue.Queue(maxsize=3)`; the
10 Hz loop `get`s a feature (blocking, `timeout=0.5`), runs the sensor and
state encoders and the action expert inline, executes `actions[0]`, and
sleeps what is left of the period. Kept as the note has it, because those
choices are what is measured against:

* the queue is consumed: every feature serves exactly one tick, a slow
  encoder blocks the loop in `get()` (on the event loop's thread), a fast
  one leaves up to three stale features queued, and the encoder is paced by
  the consumer (`put` blocks while the queue is full);
* `act` runs on the loop's thread, with no timeout and no safety filter;
* the pacing is relative (`sleep(period - elapsed)`), so lateness adds up.

Changed, and why: `asyncio.sleep` instead of `time.sleep` (the issue's
baseline is the note's loop on asyncio, beside the drivers' tasks),
`time.monotonic()` instead of `time.time()` (a wall clock can jump), the
frames come from the same fake cameras through the same latest-value slots
as the controller's (the note reads a global `camera`), and where the note
would die on `queue.Empty` the loop counts it and goes on. The robot is
stopped on every exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from controller.bench.probe import Probe
from controller.errors import WarmupError
from controller.slot import LatestValue, pump
from drivers.base import CameraDriver, Frame, JointCommand, RobotDriver, RobotState

log = logging.getLogger(__name__)

#: The note's `queue.Queue(maxsize=3)` ("VLM reuse count") and `get(timeout=0.5)`.
QUEUE_SIZE = 3
GET_TIMEOUT = 0.5


class AsyncVLEncoder:
    """The note's `AsyncVLEncoder`: a thread that encodes the newest frames into a bounded queue."""

    def __init__(
        self, policy: Any, newest_frames: Callable[[], Sequence[Frame] | None], instruction: str
    ) -> None:
        self.policy = policy
        self.newest_frames = newest_frames
        self.instruction = instruction
        self.vl_queue: queue.Queue[tuple[int, Any, float]] = queue.Queue(maxsize=QUEUE_SIZE)
        self.running = True
        self.encodes = 0
        self.errors = 0
        self.last_error = ""
        self.encode_s: list[float] = []
        self.thread = threading.Thread(target=self._encode_loop, daemon=True, name="note-vl")
        self.thread.start()

    def _encode_loop(self) -> None:
        """Background thread for VL encoding (the note's words)."""
        while self.running:
            try:
                frames = self.newest_frames()
                if frames is None:  # before every camera has a frame
                    time.sleep(0.005)
                    continue
                source = min(f.capture_time for f in frames)
                t0 = time.perf_counter()
                features = self.policy.encode_vl(frames, self.instruction)
                self.encode_s.append(time.perf_counter() - t0)
                self.encodes += 1
                # Blocks while the queue is full: the consumer paces the encoder.
                self.vl_queue.put((self.encodes, features, source))
            except Exception as exc:
                # The note prints and retries at once; counted here, logged once per kind.
                self.errors += 1
                self.last_error = repr(exc)[:300]
                if self.errors == 1:
                    log.warning("note loop: VL encoding error: %r", exc)

    def get_features(self) -> tuple[int, Any, float]:
        """Get VL features from the queue (blocking, as the note's is)."""
        return self.vl_queue.get(timeout=GET_TIMEOUT)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread: a `put` blocked on a full queue is released by draining it."""
        self.running = False
        deadline = time.monotonic() + timeout
        while self.thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    self.vl_queue.get_nowait()
            self.thread.join(0.05)
        if self.thread.is_alive():
            log.warning("note loop: the VL thread is still encoding %.0f s after close", timeout)


async def run_note_loop(
    policy: Any,
    robot: RobotDriver,
    cameras: Sequence[CameraDriver],
    *,
    hz: float,
    seconds: float,
    instruction: str,
    probe: Probe,
    warmup_timeout: float = 30.0,
) -> dict[str, Any]:
    """Run the note's loop for `seconds` on the running event loop; returns what it did.

    `policy` must be loaded already. Tick starts, act calls and commands are
    stamped into `probe` (pass `robot` and `policy` through its taps).
    """
    period = 1.0 / hz
    loop = asyncio.get_running_loop()
    frames = {cam.name: LatestValue[Frame](f"frame:{cam.name}") for cam in cameras}
    state_slot: LatestValue[RobotState] = LatestValue("state")

    def newest_frames() -> list[Frame] | None:
        latest = [slot.latest() for slot in frames.values()]
        if any(s is None for s in latest):
            return None
        return [s.value for s in latest if s is not None]

    uses: Counter[int] = Counter()
    feature_age: list[float] = []
    queue_empty = 0
    encoder: AsyncVLEncoder | None = None
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(robot)  # type: ignore[arg-type]
        for cam in cameras:
            await stack.enter_async_context(cam)  # type: ignore[arg-type]
        # Registered last, so it runs first on the way out: before any link closes.
        stack.push_async_callback(_stop_robot, robot)
        pumps = [
            asyncio.ensure_future(pump(cam.frames(), frames[cam.name], _capture_time))
            for cam in cameras
        ]
        pumps.append(asyncio.ensure_future(pump(robot.states(), state_slot, _capture_time)))
        try:
            encoder = await _warm_up(
                policy, state_slot, frames, newest_frames, instruction, warmup_timeout
            )
            seq = 0
            begin = time.monotonic()
            while True:
                start = time.monotonic()
                if start - begin >= seconds:
                    break
                probe.tick()
                try:
                    version, features, source = encoder.get_features()
                except queue.Empty:
                    queue_empty += 1  # the note's loop would raise here and stop
                else:
                    uses[version] += 1
                    feature_age.append(loop.time() - source)
                    stamped = state_slot.latest()
                    assert stamped is not None
                    actions = np.asarray(policy.act(features, stamped.value, {}))
                    seq += 1
                    await robot.command(
                        JointCommand(positions=actions[0], duration=period, seq=seq)
                    )
                elapsed = time.monotonic() - start
                await asyncio.sleep(max(0.0, period - elapsed))
        finally:
            if encoder is not None:
                await asyncio.to_thread(encoder.close)  # waits for an encode in progress
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
    return {
        "vl_encodes": encoder.encodes,
        "vl_errors": encoder.errors,
        "vl_encode_s": list(encoder.encode_s),
        "queue_empty": queue_empty,
        "feature_age_s": feature_age,
        "reuse_histogram": dict(sorted(Counter(uses.values()).items())),
    }


async def _warm_up(
    policy: Any,
    state_slot: LatestValue[RobotState],
    frames: dict[str, LatestValue[Frame]],
    newest_frames: Callable[[], Sequence[Frame] | None],
    instruction: str,
    limit: float,
) -> AsyncVLEncoder:
    """A first state, a frame from every camera, a queued feature and one action, before timing.

    The note has no warm-up; without one the first tick would wait for the
    first encode, and the comparison with the controller (which warms up)
    would measure start-up instead of the loop.
    """
    encoder: AsyncVLEncoder | None = None
    try:
        async with asyncio.timeout(limit):
            await state_slot.wait_newer(0)
            for slot in frames.values():
                await slot.wait_newer(0)
            encoder = AsyncVLEncoder(policy, newest_frames, instruction)
            # A thread fills a queue.Queue, which has nothing to await: poll it.
            while encoder.vl_queue.empty():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except BaseException as exc:
        if encoder is not None:
            await asyncio.to_thread(encoder.close)
        if not isinstance(exc, TimeoutError):
            raise
        detail = ""
        if encoder is not None and encoder.errors:
            detail = f" (VL encoding failed {encoder.errors} times, last: {encoder.last_error})"
        raise WarmupError(
            f"the note's loop had no first state, frames and VL features in {limit:g} s{detail}"
        ) from None
    try:
        _, features, _ = encoder.vl_queue.queue[0]
        state = state_slot.latest()
        assert state is not None
        policy.act(features, state.value, {})
    except BaseException:
        await asyncio.to_thread(encoder.close)
        raise
    return encoder


async def _stop_robot(robot: RobotDriver) -> None:
    """Every exit stops the arm, bounded."""
    try:
        async with asyncio.timeout(2.0):
            await robot.stop()
    except Exception as exc:
        log.error("note loop: robot.stop() failed: %r", exc)


def _capture_time(item: Frame | RobotState) -> float:
    return item.capture_time
