"""The compute executor: the one owner of the accelerator.

Two lanes, each a dedicated worker thread:

* `Lane.VL`: long VL encodes (hundreds of ms on a 3B model).
* `Lane.ACTION`: short action predictions, every control tick.

With one worker an action would wait behind an encode and the control rate
would collapse to the encoder's; with two, an action starts as soon as it is
asked for. On CUDA each lane thread makes its own stream current (the action
stream at the higher priority, so its kernels are scheduled ahead of a
running encode's), and a job's result is returned only after its stream has
finished, so a tensor handed from the VL lane to the action lane is complete.

The event loop only ever awaits futures: nothing here blocks it, except
`run_inline`, which the caller asks for by name: it runs a job on the calling
thread (the loop's), in the lane's device context, for a job measured to be
shorter than the hand-off to a worker would cost (see
`controller.action_path`). A lane never runs two jobs at once, inline
included (`LaneBusy`). Exceptions raised by a job come back on its
awaitable; the worker lives on.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from controller.clock import precise_time
from controller.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lane(enum.Enum):
    VL = "vl"
    ACTION = "action"


class Executor(Protocol):
    """What the controller needs from an executor (the test harness has a simulated one).

    An executor may also offer the timed and inline calls the action path
    uses (`run_timed`, `run_inline`: see `ComputeExecutor`); without them
    every action goes to the action lane.
    """

    device: str

    async def start(self) -> str: ...
    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any) -> T: ...
    async def close(self) -> None: ...


class LaneBusy(RuntimeError):
    """`run_inline` refused: the lane is still running a job (one abandoned by a timeout).

    Running the job inline beside it would call into the same model from two
    threads at once; the caller queues it on the lane instead.
    """


def default_cpu_threads() -> int:
    """Torch intra-op threads per process on CPU: both lanes and the event loop share the cores.

    With torch's default (one thread per core) a VL encode and an action
    compete for every core and for the loop's; on a 2-core machine that took
    VL p99 from ~80 ms to seconds. A quarter of the cores, at least one.
    """
    return max(1, (os.cpu_count() or 1) // 4)


#: `cuda` or `cuda:N`, N a small decimal index (`cuda:abc`, `cuda:-1` are typos).
_CUDA = re.compile(r"cuda(?::([0-9]{1,4}))?")


class DeviceError(ConfigError, RuntimeError):
    """The requested compute device is unknown or absent on this machine.

    A `ConfigError`, because it is bad input the CLI reports as one line
    (exit 2) rather than a failed run; also a `RuntimeError`, the type this
    function raised before, so existing callers keep catching it.
    """


def resolve_device(requested: str, cpu_threads: int | None = None) -> str:
    """`auto` -> `cuda` when torch sees a GPU, else `cpu`; anything else is checked and kept.

    Raises `DeviceError` (one line naming the device and what this machine
    has) instead of letting torch fail on first use deep inside a policy.
    """
    cuda = _CUDA.fullmatch(requested) if isinstance(requested, str) else None
    if requested not in ("auto", "cpu") and cuda is None:
        raise DeviceError(f"unknown device {requested!r} (accepted: auto, cpu, cuda, cuda:N)")
    try:
        import torch
    except ImportError:
        if requested in ("auto", "cpu"):
            return "cpu"
        raise DeviceError(f"device {requested!r} needs torch, which is not installed") from None
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = _CUDA.fullmatch(requested)
    if cuda is None:
        torch.set_num_threads(cpu_threads or default_cpu_threads())
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {requested!r} asked for, but torch sees no CUDA device"
            f" (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'});"
            " use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if cuda.group(1) is not None and int(cuda.group(1)) >= count:
        raise DeviceError(
            f"device {requested!r} asked for, but torch sees {count} CUDA device(s)"
            f" (cuda:0 to cuda:{count - 1})"
        )
    return requested


def stream_priority(lane: Lane, priority_range: tuple[int, int]) -> int:
    """The CUDA stream priority of a lane: the action lane the greatest the device offers.

    `priority_range` is `torch.cuda.Stream.priority_range()`: (least, greatest),
    lower numbers meaning higher priority (e.g. (0, -5)). A fixed -1 was only
    the second of four levels on the H200 the GPU benchmark ran on (range 0
    to -3), where the action lane's p99 rose 1.6 -> 5.3 ms beside a running
    encode; the VL lane takes the least, below every other stream.
    """
    least, greatest = priority_range
    return greatest if lane is Lane.ACTION else least


class ComputeExecutor:
    """Two single-thread lanes sharing one torch device."""

    def __init__(self, device: str = "auto", *, cpu_threads: int | None = None) -> None:
        self.requested = device
        self.cpu_threads = cpu_threads
        self.device = "unresolved"
        self._pools: dict[Lane, ThreadPoolExecutor] = {}
        self._streams: dict[Lane, Any] = {}
        self._local = threading.local()
        #: Held while a lane's job runs, on its worker or inline: one job per lane at a time.
        self._running = {lane: threading.Lock() for lane in Lane}
        self._closed = False
        self.jobs = {lane: 0 for lane in Lane}
        self.failures = {lane: 0 for lane in Lane}

    async def start(self) -> str:
        """Create the lanes and resolve the device (importing torch off the loop)."""
        if self._pools:
            return self.device
        for lane in Lane:
            self._pools[lane] = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"compute-{lane.value}",
                initializer=self._init_thread,
                initargs=(lane,),
            )
        loop = asyncio.get_running_loop()
        self.device = await loop.run_in_executor(
            self._pools[Lane.VL], resolve_device, self.requested, self.cpu_threads
        )
        if self.device.startswith("cuda"):
            await asyncio.gather(
                *(loop.run_in_executor(self._pools[lane], self._make_stream, lane) for lane in Lane)
            )
        log.info(
            "compute executor on %s (lanes: %s)",
            self.device,
            ", ".join(lane.value for lane in Lane),
        )
        return self.device

    def _init_thread(self, lane: Lane) -> None:
        self._local.lane = lane
        self._local.stream = None

    def _make_stream(self, lane: Lane) -> None:
        import torch

        priority = stream_priority(lane, torch.cuda.Stream.priority_range())
        stream = torch.cuda.Stream(device=self.device, priority=priority)
        torch.cuda.set_stream(stream)  # current stream is per thread: this lane's only
        self._streams[lane] = stream
        self._local.stream = stream

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[T, float]:
        """On a lane's worker: the job and the seconds it took (its stream finished included)."""
        with self._running[self._local.lane]:
            start = precise_time()
            result = fn(*args)
            stream = getattr(self._local, "stream", None)
            if stream is not None:
                stream.synchronize()  # releases the GIL while the GPU finishes
            return result, precise_time() - start

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("compute executor is closed")
        if not self._pools:
            raise RuntimeError("compute executor not started")

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any) -> T:
        return (await self.run_timed(lane, fn, *args))[0]

    async def run_timed(self, lane: Lane, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """`run`, also returning the seconds the job itself took on its worker.

        That time excludes the queueing and the two thread hand-offs (the
        worker taking the job, the loop taking the result back), which are
        what an inline call saves.
        """
        self._check_open()
        self.jobs[lane] += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pools[lane], self._call, fn, args)
        except Exception:
            self.failures[lane] += 1
            raise

    def run_inline(self, lane: Lane, fn: Callable[..., T], *args: Any) -> tuple[T, float]:
        """Run `fn(*args)` now, on the calling thread, in `lane`'s device context; blocks for it.

        Called from the event loop, this stops the loop for the job's whole
        duration (on CUDA until the lane's stream has finished, the same
        guarantee `run` gives): only for jobs measured to be short. Raises
        `LaneBusy` while the lane's worker is still running a job. Returns the
        result and the seconds it took.
        """
        self._check_open()
        if not self._running[lane].acquire(blocking=False):
            raise LaneBusy(f"the {lane.value} lane is still running a job")
        try:
            self.jobs[lane] += 1
            start = precise_time()
            stream = self._streams.get(lane)
            try:
                if stream is None:
                    result = fn(*args)
                else:
                    import torch

                    with torch.cuda.stream(stream):  # this thread's current stream, for this job
                        result = fn(*args)
                    stream.synchronize()
            except Exception:
                self.failures[lane] += 1
                raise
            return result, precise_time() - start
        finally:
            self._running[lane].release()

    async def close(self) -> None:
        """Stop taking work; wait (off the loop, bounded) for running jobs to finish."""
        if self._closed:
            return
        self._closed = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        # A running job cannot be interrupted; wait for it in a helper thread.
        waiters = [asyncio.to_thread(pool.shutdown, wait=True) for pool in pools.values()]
        if waiters:
            try:
                async with asyncio.timeout(10.0):
                    await asyncio.gather(*waiters)
            except TimeoutError:
                log.warning("compute executor: a job still running 10 s after close; leaving it")
