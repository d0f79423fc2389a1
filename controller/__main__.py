"""`python -m controller`: see `controller.cli`.

The stop signals are caught here, before the CLI (and everything it
imports) loads: from the first moment a SIGHUP from a closing terminal or a
SIGTERM is recorded instead of killing the process outright. `cli.main`
takes the recorded signals over, so a stop asked for this early means the
controller never connects to the robot.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_early: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _early.append(signum)


for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
    _sig = getattr(signal, _name, None)
    if _sig is not None and signal.getsignal(_sig) is not signal.SIG_IGN:
        signal.signal(_sig, _record)

from controller.cli import main  # noqa: E402  (after the handlers, on purpose)

sys.exit(main(early_signals=_early, owns_process=True))
