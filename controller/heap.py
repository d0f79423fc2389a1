"""The heap frozen out of the garbage collector's sight while a controller is active.

Why freeze: torch, transformers, aiortc and av leave ~240,000 tracked
objects; a full collection over them stopped the loop for 105-150 ms (a
missed tick and a stale state). After `gc.freeze()` a full collection walks
only the garbage made since, in ~2 ms.

Why thaw when the run ends: frozen objects are never collected, only freed
when their reference count drops to zero, and a controller run is full of
reference cycles (the controller, its telemetry's preallocated rings, the
drivers, a sim world's MuJoCo model and thread pools, the observers'
closures). Left frozen, every run's objects stayed for the life of the
process: `python -m controller.collect`, one controller per episode, grew by
~10 MB of resident memory an episode. Thawed, the next full collection (the
next run's, at its warm-up) frees them.

The freeze is the process's, not one run's: with several controllers active
at once, the heap is thawed when the last of them ends (`hold` and
`release` count them), so no active run loses its freeze to another's end.
Someone else's freeze (a benchmark's, before each of its runs) is thawed with
it; it freezes again before its next run.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holders = 0


def freeze() -> None:
    """Collect, then freeze everything alive (blocks for the collection: ~0.1 s with torch)."""
    gc.collect()
    gc.freeze()


def hold() -> None:
    """One more active run needs the heap frozen (pair with `release`)."""
    global _holders
    with _lock:
        _holders += 1


def release() -> None:
    """An active run ended: the last one to end thaws the heap, so its garbage can be collected."""
    global _holders
    with _lock:
        _holders = max(_holders - 1, 0)
        if _holders == 0:
            gc.unfreeze()


def holders() -> int:
    """Runs that hold the heap frozen now (for tests: 0 once every run has ended)."""
    with _lock:
        return _holders
