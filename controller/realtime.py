"""Real-time CPU scheduling (SCHED_FIFO) for the control path's threads, as ros2_control's node does.

Why. The precise wake (`controller.scheduler`) removes the timer's
millisecond; what remains of a tick's lateness on a loaded machine is the
OS: the loop's thread wakes while a VL encoder (another process, or
another thread) holds its core, and waits for the kernel to preempt it.
Under the normal scheduler that wait is a fraction of a millisecond and
sometimes several; under SCHED_FIFO the loop's thread preempts every
normal task on its core the moment it becomes runnable. On the 2-core
benchmark machine (docs/performance.md, "Real-time scheduling"), at 100 Hz
with the encoder saturated or at 300 ms, every row with it held 999-1000
of 1000 ticks on time with no action timeout (972-998 without), lateness
p99 0.05-0.12 ms with the process lane. With the thread lane the loop can
still wait for the GIL the VL thread holds, so it belongs with the process
lane. `python -m controller.bench loop --modes rt_priority=0,50` measures
it.

Why opt-in (`ControllerConfig.rt_priority`, 0 by default). It needs a
privilege (root, CAP_SYS_NICE, or an rtprio limit from
/etc/security/limits.conf), and a real-time thread that never sleeps starves
its core (the kernel's RT throttling still leaves 5 % of it to the rest).
The loop's thread does sleep every tick, and its busy-wait is bounded (the
spin, at most a fifth of a period); an inline `act` is kept short by the
action path's rule. A policy whose `act` can hang must not run inline
(`action_inline_max = 0`) whatever the scheduling.

What it changes: the control path's threads, each by its own id (Linux
applies a policy per thread): the event loop's, and the action lane's
(`act` runs there whenever it is not inline, and the tick waits for it;
left under the normal scheduler, that thread is preempted by the encoder
while the real-time loop waits on it, a priority inversion: with every
`act` on the lane, overhead per tick p99 was 2.7-4.8 ms with only the loop
real-time and 0.8-1.1 ms with both, three pairs of runs; docs/performance.md,
"Real-time scheduling"). Each is
set with SCHED_RESET_ON_FORK, so threads and processes started meanwhile
(an executor's lazily created workers, a restarted VL worker) get the
normal policy; each gets its previous policy back when the run stops
the robot. A refusal is not an error: the run goes on under the normal
scheduler, says so in the log and in the summary (`realtime`), and names
the missing privilege. Memory is not locked (`mlockall`, ros2_control's other step):
with a model loaded that would pin gigabytes, and the heap is already
kept out of the garbage collector's way (`controller.heap`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Highest SCHED_FIFO priority Linux accepts (`sched_get_priority_max`).
MAX_PRIORITY = 99


@dataclass(frozen=True, slots=True)
class RealtimeGrant:
    """What the control path's threads got: the summary's `realtime`."""

    #: The priority asked for (0: real-time scheduling not asked for).
    requested: int
    granted: bool
    #: What was done, or why not (a privilege to grant, an OS without it).
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sched(Protocol):
    """A thread's scheduling policy (the OS's, or a test's stand-in); `tid` 0: the calling thread."""

    fifo: int
    #: Flag or-ed into the policy so threads and processes started meanwhile do not inherit it.
    reset_on_fork: int

    def get(self, tid: int) -> tuple[int, int]:
        """(policy, priority) of thread `tid` (its native id, `threading.get_native_id`)."""
        ...

    def set(self, tid: int, policy: int, priority: int) -> None:
        """Set thread `tid`'s policy; raises `PermissionError` when not allowed."""
        ...

    def rtprio_limit(self) -> int | None:
        """The soft RLIMIT_RTPRIO (None: unlimited or unknown)."""
        ...


class OsSched:
    """The real one: `os.sched_*`, which on Linux take a thread's id (0: the calling thread)."""

    def __init__(self) -> None:
        self.fifo: int = os.SCHED_FIFO
        self.reset_on_fork: int = getattr(os, "SCHED_RESET_ON_FORK", 0)

    def get(self, tid: int) -> tuple[int, int]:
        return os.sched_getscheduler(tid), os.sched_getparam(tid).sched_priority

    def set(self, tid: int, policy: int, priority: int) -> None:
        os.sched_setscheduler(tid, policy, os.sched_param(priority))

    def rtprio_limit(self) -> int | None:
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
        except (ImportError, AttributeError, OSError, ValueError):
            return None
        return None if soft == resource.RLIM_INFINITY else int(soft)


def os_sched() -> Sched | None:
    """The OS's scheduling calls, or None where there is no SCHED_FIFO (not Linux)."""
    if not all(hasattr(os, n) for n in ("sched_setscheduler", "sched_getscheduler", "SCHED_FIFO")):
        return None
    return OsSched()


def _refusal(priority: int, exc: OSError, sched: Sched) -> str:
    limit = sched.rtprio_limit()
    now = "unlimited" if limit is None else str(limit)
    return (
        f"SCHED_FIFO priority {priority} refused ({exc.strerror or exc}): run as root, give"
        f" the interpreter CAP_SYS_NICE, or raise the rtprio limit to at least {priority}"
        f" (ulimit -r, now {now}; /etc/security/limits.conf); running under the normal scheduler"
    )


@contextlib.contextmanager
def realtime_thread(
    priority: int, sched: Sched | None, *, tid: int = 0, what: str = "the control loop's thread"
) -> Iterator[RealtimeGrant]:
    """SCHED_FIFO at `priority` for thread `tid` (0: the calling one) while inside; its previous
    policy after.

    `priority` 0 changes nothing. `sched` None means the OS has no
    SCHED_FIFO: nothing changes either, and the grant says why. `what`
    names the thread in the grant and the log.
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be in 0..{MAX_PRIORITY}, got {priority!r}")
    if priority == 0:
        yield RealtimeGrant(0, False, "off (rt_priority 0): the normal scheduler")
        return
    if sched is None:
        grant = RealtimeGrant(
            priority, False, "SCHED_FIFO needs Linux (os.sched_setscheduler); not on this OS"
        )
        log.warning("real-time scheduling: %s", grant.detail)
        yield grant
        return
    try:
        previous = sched.get(tid)
        sched.set(tid, sched.fifo | sched.reset_on_fork, priority)
    except OSError as exc:
        grant = RealtimeGrant(priority, False, _refusal(priority, exc, sched))
        log.warning("real-time scheduling: %s", grant.detail)
        yield grant
        return
    grant = RealtimeGrant(priority, True, f"SCHED_FIFO priority {priority} on {what}")
    log.info("real-time scheduling: %s", grant.detail)
    try:
        yield grant
    finally:
        _restore(sched, tid, previous)


def _restore(sched: Sched, tid: int, previous: tuple[int, int]) -> None:
    """Back to the thread's previous policy; never raises (the way out must go on)."""
    policy, priority = previous
    # Without privilege the reset-on-fork flag, once set, may not be cleared: keep it then
    # (it only affects what children inherit, and they get the normal policy anyway).
    for attempt in (policy, policy | sched.reset_on_fork):
        try:
            sched.set(tid, attempt, priority)
            return
        except OSError as exc:
            error = exc
    log.error("real-time scheduling: could not restore the thread's policy: %s", error)
