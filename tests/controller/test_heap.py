"""`controller.heap`: frozen while any run holds it, thawed when the last one ends."""

from __future__ import annotations

import gc

from controller import heap


def test_the_heap_stays_frozen_until_the_last_active_run_ends():
    gc.unfreeze()
    assert heap.holders() == 0
    heap.hold()
    heap.hold()  # two controllers active at once
    heap.freeze()
    heap.release()
    assert gc.get_freeze_count() > 0  # the other run is still active: it keeps its freeze
    heap.release()
    assert gc.get_freeze_count() == 0 and heap.holders() == 0


def test_a_release_without_a_hold_does_not_go_below_zero():
    heap.release()
    heap.hold()
    heap.freeze()
    assert gc.get_freeze_count() > 0
    heap.release()
    assert gc.get_freeze_count() == 0 and heap.holders() == 0
