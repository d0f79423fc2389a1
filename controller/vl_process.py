"""The process VL lane: the VL encoder in a supervised worker process.

Why: in the thread lane the encoder's Python-heavy preprocessing and its
forward run in the controller's process and hold the GIL against the event
loop and the action lane; every hand-off can then wait out a 5 ms switch
interval (issue 11 measured 3-7 ms tick-lateness p99 with the encoder
saturated). In a worker process the encoder has its own interpreter, and
the controller's VL lane thread only copies the frames into shared memory
and waits on a pipe, with the GIL released.

How:

* `ProcessVLPolicy` stands in for the policy: `act` runs the policy built
  in this process (the action lane stays here; on CUDA on its
  high-priority stream, as before), `encode_vl` hands the frames to the
  worker and blocks the VL lane's thread until the features come back.
  Because the wait is an executor job, the virtual clock of the test
  harness does not move while the worker works (`controller.clock`): a
  worker's encode costs zero virtual time, like a thread's.
* The worker is started with the `spawn` method (torch and CUDA do not
  survive a fork) and builds the policy itself from a picklable
  `PolicySpec` (plugin name + options), then loads it on the device the
  executor resolved, with the executor's CPU thread count, so it encodes
  bit for bit as the thread lane would. A policy that can load its halves
  apart (`policies.base.SplitLoad`, as qwen-vla does) loads only its VL
  model in the worker and only its action half here, so the VL weights
  are never loaded twice; any other policy loads whole in both.
* Frames go through a ring of shared-memory slots (`controller.shm_frames`);
  the pipe carries only a small header per encode, and the pooled features
  come back pickled (a few KB).
* Supervision: a worker that exits (crash, OOM kill, SIGKILL) is noticed
  by the pipe's EOF; one that does not reply within the hang bound is
  killed. Either way the encode raises `VLWorkerCrashed` / `VLWorkerHung`
  (counted in telemetry by the controller, which holds on stale features
  meanwhile), and a replacement is started at once; the next encode waits
  for it to be ready. An exception raised by the policy's `encode_vl` in
  the worker comes back as that exception; the worker lives on.
* Cleanup: `close()` (the controller calls it on every exit path) stops the
  worker and unlinks the segments; a finalizer does the same if the object
  is dropped or the interpreter exits, and the worker dies with its parent
  (Linux: `PR_SET_PDEATHSIG`; elsewhere on the pipe's EOF).

On CUDA the worker has its own CUDA context. Stream priorities order
kernels only within one context: while both processes have work queued,
the GPU time-slices between the two contexts (unless MPS is running), so
the action lane's priority over an encode is not what the thread lane's
priority streams give. Which wins on a given GPU is for the GPU benchmark
to measure; until it has, the thread lane stays the default.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from controller.shm_frames import FrameReader, FrameRing
from drivers.base import Frame, RobotInfo, RobotState, SensorReading
from policies.base import SplitLoad
from policies.errors import PolicyConfigError, PolicyError

log = logging.getLogger(__name__)

#: Without an explicit bound, an encode may take this many times the slowest
#: steady encode of the same worker (any but its first, which initialises
#: lazily) before it counts as hung...
HANG_FACTOR = 10.0
#: ...and never less than this (a loaded machine can stall a process for a while).
MIN_HANG = 2.0
#: How long a worker may take to start and load its model (a 3B model from disk
#: takes tens of seconds); a worker that exits meanwhile is noticed at once.
LOAD_TIMEOUT = 600.0
#: A closing worker gets this long to exit on its own before it is killed.
EXIT_GRACE = 1.0
#: How often a wait on the pipe also checks that the worker still lives (its
#: pipe end may be held open by a child of its own).
_POLL = 0.25


class VLWorkerError(PolicyError):
    """The VL worker process failed (not the policy's own error, which comes back as itself)."""

    #: The telemetry error kind the controller counts it under.
    telemetry_kind = "vl_worker_error"


class VLWorkerCrashed(VLWorkerError):
    """The worker exited (crash, OOM kill, signal); a replacement is being started."""

    telemetry_kind = "vl_worker_crash"


class VLWorkerHung(VLWorkerError):
    """The worker did not answer within its bound; it was killed and is being replaced."""

    telemetry_kind = "vl_worker_hang"


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """What the worker builds its policy from: a `controller.policies` name and its options.

    Picklable by construction (a name and plain option values); checked when
    the process lane is set up, so a bad spec is one clear line before
    anything starts.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        from policies import base as policies

        installed = policies.available()
        if self.name not in installed:
            raise PolicyConfigError(
                f"VL worker: no policy named {self.name!r}"
                f" (installed: {', '.join(sorted(installed)) or 'none'})"
            )
        try:
            pickle.dumps(self)
        except Exception as exc:
            raise PolicyConfigError(
                f"VL worker: the options of policy {self.name!r} cannot be sent to the worker"
                f" process ({type(exc).__name__}: {exc}); give plain values (numbers, strings,"
                " lists, tables)"
            ) from None

    def build(self) -> Any:
        from policies import base as policies

        return policies.create(self.name, dict(self.options))


# -- the worker process --------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the thread that started it ends.

    The pipe's EOF ends an idle worker too, but not one stuck in a forward.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _error_payload(exc: BaseException) -> tuple[bytes | None, str, str]:
    """An exception as (pickled if it round-trips, `Type: message`, remote traceback)."""
    text = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(exc))
    try:
        blob: bytes | None = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = None
    return blob, text, tb


def _send(conn: Connection, msg: Any) -> None:
    # The standard pickler, not multiprocessing's: torch registers reductions
    # there that would move tensors through shared-memory files of their own.
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _worker_main(
    conn: Connection,
    spec: PolicySpec,
    device: str,
    cpu_threads: int | None,
    robot: RobotInfo,
    control_period: float,
    nice: int = 0,
) -> None:
    """The worker: build and load the policy, then answer encodes until told to stop or orphaned."""
    _die_with_parent()
    # Below the controller on a contended core: on 2 cores the encoder preempting the
    # loop was a large part of the 100 Hz lateness p99 (`ControllerConfig.vl_worker_nice`).
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    # Ctrl-C, a closing terminal's SIGHUP and a service manager's SIGTERM reach the
    # whole process group: the controller stops on them and then stops its worker, which
    # must not die first (the lane would count a crash and start a replacement mid-stop).
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    stream = None
    try:
        policy = spec.build()
        # Resolved as the executor did (torch's CPU threads included, so a CPU encode
        # is bit for bit the thread lane's); a policy that never imported torch skips it.
        if device.startswith("cuda") or (device == "cpu" and "torch" in sys.modules):
            from controller.executor import resolve_device

            device = resolve_device(device, cpu_threads)
        if device.startswith("cuda"):
            import torch

            from controller.executor import Lane, stream_priority

            # The least priority, as the thread lane's VL stream.
            priority = stream_priority(Lane.VL, torch.cuda.Stream.priority_range())
            stream = torch.cuda.Stream(device=device, priority=priority)
            torch.cuda.set_stream(stream)
        # Only the VL half when the policy can load its halves apart (SplitLoad).
        vl = None
        if isinstance(policy, SplitLoad):
            vl = dict(policy.load_vl(device, robot, control_period))
        else:
            policy.load(device, robot, control_period)
    except BaseException as exc:
        _send(conn, ("error", None, _error_payload(exc)))
        _exit(1)
    _send(conn, ("ready", os.getpid(), vl))
    reader = FrameReader()
    try:
        _serve(conn, policy, reader, stream)
    finally:
        reader.close()
    _exit(0)


def _serve(conn: Connection, policy: Any, reader: FrameReader, stream: Any) -> None:
    """Answer encodes until told to stop, or until the controller's end of the pipe closes."""
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the controller is gone
        if msg[0] == "close":
            return
        _, job, ref, instruction = msg
        try:
            frames = reader.frames(ref)
            features = policy.encode_vl(frames, instruction)
            del frames
            if stream is not None:
                stream.synchronize()
            reply = pickle.dumps(("ok", job, features), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            _send(conn, ("error", job, _error_payload(exc)))
            continue
        conn.send_bytes(reply)


def _exit(code: int) -> None:
    """Run the exit hooks, then leave without the interpreter's teardown of torch and the
    model (it took a second here, while the controller waits to finish its own shutdown).

    The hooks matter: a progress bar's lock (tqdm's) is a named semaphore that
    multiprocessing unlinks from its exit hook, and skipping it made the resource
    tracker warn of "leaked semaphore objects" at the end of every run.
    """
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _remote_error(payload: tuple[bytes | None, str, str], where: str) -> BaseException:
    """The worker's exception, as itself when it unpickles, else a `VLWorkerError` naming it."""
    blob, text, tb = payload
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, Exception):
        exc = VLWorkerError(f"{where}: {text}")
    exc.add_note(f"raised in the VL worker process:\n{tb}")
    return exc


# -- the controller's side --------------------------------------------------------------


class _Died(Exception):
    pass


class _TimedOut(Exception):
    pass


class _Worker:
    """One worker process and its end of the pipe."""

    def __init__(self, ctx: Any, spec: PolicySpec, args: tuple[Any, ...]) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, spec, *args),
            name=f"vl-worker-{spec.name}",
            daemon=True,  # multiprocessing's exit hook kills it if everything else failed
        )
        self.process.start()
        child.close()  # else the worker's death would never read as EOF here
        self.ready = False
        #: An encode is in flight (a closing worker is then killed, not asked).
        self.busy = False
        #: Encodes answered, and the slowest of them after the first (0: none yet).
        self.encodes = 0
        self.slowest = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def send(self, msg: Any) -> None:
        try:
            _send(self.conn, msg)
        except (OSError, ValueError) as exc:
            raise _Died(f"its pipe is closed ({exc})") from None

    def recv(self, bound: float) -> Any:
        """The next message, waiting at most `bound` seconds; `_Died` / `_TimedOut` otherwise."""
        deadline = time.monotonic() + bound
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _TimedOut
            try:
                if self.conn.poll(min(left, _POLL)):
                    return pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError, ValueError):
                raise _Died(self.describe_exit()) from None
            if not self.process.is_alive():
                raise _Died(self.describe_exit())

    def describe_exit(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode
        if code is None:
            return "its pipe closed"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def stop(self, grace: float) -> None:
        """Ask the worker to exit; kill it if it does not within `grace` (0: kill at once)."""
        if grace > 0 and self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                _send(self.conn, ("close",))
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


class _Resources:
    """What must never leak: the worker process and the shared-memory ring.

    Kept apart from `ProcessVLPolicy` so a finalizer can release them
    without keeping the policy alive. `lock` guards starting and stopping
    (never held while waiting for the worker), so `release` from another
    thread cannot race a restart into leaking a process or a segment.
    """

    def __init__(self, slots: int) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.worker: _Worker | None = None
        self.ring = FrameRing(slots)

    def release(self) -> None:
        with self.lock:
            self.closed = True
            worker, self.worker = self.worker, None
            try:
                if worker is not None:
                    idle = worker.ready and not worker.busy
                    worker.stop(grace=EXIT_GRACE if idle else 0.0)
                    log.info("VL worker %s stopped (%s)", worker.pid, worker.describe_exit())
            finally:
                self.ring.close()


class ProcessVLPolicy:
    """A policy whose `encode_vl` runs in a supervised worker process and `act` in this one.

    `load`, `encode_vl` and `close` block: call them on the executor's VL
    lane (the controller does), never on the event loop; `aclose()` is the
    loop's way to close.
    """

    def __init__(
        self,
        spec: PolicySpec,
        *,
        inner: Any | None = None,
        timeout: float | None = None,
        first_timeout: float = 30.0,
        load_timeout: float = LOAD_TIMEOUT,
        cpu_threads: int | None = None,
        nice: int = 0,
        slots: int = 2,
    ) -> None:
        """`inner`: the policy built here (for `act`), else built from `spec`.

        `timeout`: the hang bound of an encode; None derives it: until one
        encode after a worker's first has answered, `first_timeout` (the
        first initialises lazily), then `HANG_FACTOR` times the slowest of
        those, at least `MIN_HANG`. `nice`: the worker's CPU priority below
        this process's (a Unix nice increment, 0-19; ignored where the OS
        has no `os.nice`).
        """
        spec.check()
        for what, value in (("timeout", timeout), ("first_timeout", first_timeout)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise PolicyConfigError(f"VL worker: {what} must be seconds > 0, got {value!r}")
        self.spec = spec
        self.inner = inner if inner is not None else spec.build()
        self.name = getattr(self.inner, "name", spec.name)
        self.timeout = timeout
        self.first_timeout = float(first_timeout)
        self.load_timeout = float(load_timeout)
        self.cpu_threads = cpu_threads
        if not (isinstance(nice, int) and not isinstance(nice, bool) and 0 <= nice <= 19):
            raise PolicyConfigError(f"VL worker: nice must be an integer in 0..19, got {nice!r}")
        self.nice = nice
        self._ctx = multiprocessing.get_context("spawn")
        self._res = _Resources(slots)
        self._finalizer = weakref.finalize(self, self._res.release)
        self._encode_lock = threading.Lock()
        self._load_args: tuple[str, RobotInfo, float] | None = None
        #: What the first worker reported of its VL model (`SplitLoad.load_vl`).
        self._vl: dict[str, Any] | None = None
        self._job = 0
        #: Supervision counts: workers started, replaced after a crash or a hang.
        self.starts = 0
        self.crashes = 0
        self.hangs = 0

    # -- status ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The current worker's process id (None before `load` or after `close`)."""
        worker = self._res.worker
        return None if worker is None else worker.pid

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    @property
    def segments(self) -> list[str]:
        """Every shared-memory segment this lane created (tests check none is left)."""
        return list(self._res.ring.created)

    # -- the Policy interface ------------------------------------------------------------

    def load(self, device: str, robot: RobotInfo, control_period: float) -> None:
        """Start the worker, which loads its copy; load what `act` needs here.

        A `SplitLoad` policy loads only its VL half in the worker and only its
        action half here, from what the worker reports of its VL model;
        any other policy loads whole in both processes, side by side.
        """
        with self._encode_lock:
            self._load_args = (device, robot, control_period)
            worker = self._start()
            split = isinstance(self.inner, SplitLoad)
            if not split:
                self.inner.load(device, robot, control_period)
            vl = self._await_ready(worker)
            if split and vl is not None:
                self.inner.load_action(device, robot, control_period, vl)
            elif split:  # the worker's copy is not a SplitLoad: it loaded whole
                self.inner.load(device, robot, control_period)
            self._vl = vl

    def encode_vl(self, frames: Sequence[Frame], instruction: str) -> Any:
        with self._encode_lock:
            worker = self._current()
            if not worker.ready:
                self._await_ready(worker)
            bound = self._bound(worker)
            with self._res.lock:
                if self._res.closed:
                    raise VLWorkerError("VL worker: closed")
                ref = self._res.ring.write(frames)
            self._job += 1
            job = self._job
            started = time.monotonic()
            worker.busy = True
            try:
                worker.send(("encode", job, ref, instruction))
                reply = worker.recv(bound)
                worker.busy = False
            except _Died as exc:
                raise self._replace(worker, VLWorkerCrashed, f"VL worker exited ({exc})") from None
            except _TimedOut:
                raise self._replace(
                    worker, VLWorkerHung, f"VL worker gave no features within {bound:.3g} s"
                ) from None
            kind, got = reply[0], reply[1]
            if got != job:
                raise self._replace(
                    worker, VLWorkerCrashed, f"VL worker answered job {got}, expected {job}"
                )
            if kind == "error":
                raise _remote_error(reply[2], "VL worker: encode_vl failed")
            if worker.encodes:  # the first includes lazy initialisation: not a measure
                worker.slowest = max(worker.slowest, time.monotonic() - started)
            worker.encodes += 1
            return reply[2]

    def act(self, features: Any, state: RobotState, sensors: Mapping[str, SensorReading]) -> Any:
        return self.inner.act(features, state, sensors)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: __init__ failed before it
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- supervision ---------------------------------------------------------------------

    def _start(self) -> _Worker:
        assert self._load_args is not None
        device, robot, period = self._load_args
        with self._res.lock:
            if self._res.closed:
                raise VLWorkerError("VL worker: closed")
            worker = _Worker(
                self._ctx, self.spec, (device, self.cpu_threads, robot, period, self.nice)
            )
            self._res.worker = worker
            self.starts += 1
        log.info("VL worker %d started (policy %s on %s)", worker.pid, self.spec.name, device)
        return worker

    def _current(self) -> _Worker:
        """The live worker; one found dead between encodes is replaced (and reported)."""
        worker = self._res.worker
        if worker is None:
            if self._res.closed:
                raise VLWorkerError("VL worker: closed")
            if self._load_args is None:
                raise PolicyError("VL worker: encode_vl called before load")
            return self._start()  # a previous start failed: try again
        if not worker.process.is_alive():
            raise self._replace(worker, VLWorkerCrashed, f"VL worker {worker.describe_exit()}")
        return worker

    def _await_ready(self, worker: _Worker) -> dict[str, Any] | None:
        """Wait for `worker` to load; what it reports of its VL model (None: not a SplitLoad)."""
        try:
            msg = worker.recv(self.load_timeout)
        except _Died as exc:
            self._drop(worker)
            raise VLWorkerCrashed(
                f"VL worker for policy {self.spec.name!r} exited while loading ({exc}; its own"
                " error, if any, is on stderr; a script that starts a controller with the"
                " process lane must guard its entry point with if __name__ == '__main__':)"
            ) from None
        except _TimedOut:
            self._drop(worker)
            raise VLWorkerHung(
                f"VL worker for policy {self.spec.name!r} not ready within {self.load_timeout:g} s"
            ) from None
        if msg[0] == "error":
            self._drop(worker)
            raise _remote_error(msg[2], f"VL worker: policy {self.spec.name!r} failed to load")
        vl = msg[2]
        if self._vl is not None and vl != self._vl:
            # A replacement loaded another VL model (its files changed on disk): the action
            # half here was built for the first one, so its features must not be used.
            self._drop(worker)
            raise VLWorkerError(
                f"VL worker restarted with another VL model ({vl} instead of {self._vl})"
            )
        worker.ready = True
        log.info("VL worker %d ready", worker.pid)
        return vl

    def _bound(self, worker: _Worker) -> float:
        if self.timeout is not None:
            return self.timeout
        if worker.slowest == 0.0:
            return self.first_timeout
        return max(MIN_HANG, HANG_FACTOR * worker.slowest)

    def _drop(self, worker: _Worker) -> None:
        """Kill `worker` if it is still the current one (a close may have taken it already)."""
        with self._res.lock:
            if self._res.worker is worker:
                self._res.worker = None
            else:
                return
        worker.stop(grace=0.0)

    def _replace(self, worker: _Worker, error: type[VLWorkerError], why: str) -> VLWorkerError:
        """Count the failure, kill the worker, start its replacement; the error to raise."""
        if self._res.closed:
            return VLWorkerError("VL worker: closed")
        if error is VLWorkerHung:
            self.hangs += 1
        else:
            self.crashes += 1
        self._drop(worker)
        log.error("%s; starting a new one", why)
        try:
            self._start()
        except Exception as exc:  # the next encode tries again
            if not self._res.closed:
                log.error("VL worker could not be restarted: %s", exc)
        return error(why)

    # -- shutdown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker and unlink the frame ring; safe to call twice, from any thread.

        A running encode fails at once (its worker is killed); it is not waited for.
        """
        self._finalizer()

    async def aclose(self) -> None:
        """`close()` off the event loop."""
        await asyncio.to_thread(self.close)

    @property
    def closed(self) -> bool:
        return self._res.closed
