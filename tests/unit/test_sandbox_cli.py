"""The sandbox CLI's process settings, without serving."""

from __future__ import annotations

import gc

from processor.sandbox.cli import GC_THRESHOLD, collector_for_serving


def test_serving_tunes_the_collector_and_puts_it_back() -> None:
    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with collector_for_serving():
        assert gc.get_threshold() == (GC_THRESHOLD, *threshold[1:])
        assert gc.get_freeze_count() > frozen
        assert gc.isenabled()
    assert gc.get_threshold() == threshold
    assert frozen or gc.get_freeze_count() == 0  # what it froze is unfrozen
