"""`LatestValue[T]`: the async latest-value slot (re-exported from `drivers.newest`).

The seed note used `queue.Queue(maxsize=3)` between the VL encoder and the
control loop; a slot keeps exactly one value instead (see `drivers.newest`
for why). The primitive lives in the drivers' interface layer so that the
frame mailboxes and the UR5 state hand-off use the same one while drivers
still never import the controller; this module keeps the names the harness
and the README have always used: `from controller.slot import LatestValue, Stamped`.
"""

from __future__ import annotations

from drivers.newest import LatestValue, SlotClosed, Stamped, ThreadPublisher, pump

__all__ = ["LatestValue", "SlotClosed", "Stamped", "ThreadPublisher", "pump"]
