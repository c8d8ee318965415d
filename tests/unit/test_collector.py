"""The garbage collector's settings while ``run`` or the sandbox serves."""

from __future__ import annotations

import gc

from processor.collector import GC_THRESHOLD, collector_for_serving


def test_serving_tunes_the_collector_and_puts_it_back() -> None:
    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with collector_for_serving():
        assert gc.get_threshold() == (GC_THRESHOLD, *threshold[1:])
        assert gc.get_freeze_count() > frozen
        assert gc.isenabled()
    assert gc.get_threshold() == threshold
    assert frozen or gc.get_freeze_count() == 0  # what it froze is unfrozen


def test_run_keeps_the_young_generation_threshold() -> None:
    threshold = gc.get_threshold()
    with collector_for_serving(young_threshold=None):
        assert gc.get_threshold() == threshold
    assert gc.get_threshold() == threshold
