"""The garbage collector's setup for the worker's life (``stream.worker.settle_gc``)."""

from __future__ import annotations

import gc

from stream.worker import GC_YOUNG_THRESHOLD, settle_gc


def test_what_exists_is_frozen_and_the_young_generation_is_wider() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        settle_gc()
        # Everything alive at the start is left out of later collections.
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert before[0] < GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
