"""The garbage collector's settings for a long-running process (``run`` and the sandbox).

Both make many short-lived containers: a decoded record, a decoded 1000-event body
(some 10,000 containers), each freed by reference counting moments later. Collecting
every 700 allocations (CPython's default) walks each of them about twice while it is
alive and promotes it, and the full collections that follow walk everything the
process built at start-up. So, while serving, the start-up objects are frozen (they
live as long as the process) and the sandbox collects its young generation every
:data:`GC_THRESHOLD` allocations.

``run`` keeps CPython's thresholds: httpx leaves some 45 objects of cyclic garbage
after each request, holding the request body (460 kB for 1,000 events). Collected
young, they free it at once; at 20,000 allocations between collections, hundreds of
bodies pile up (measured through a 60 s outage with 1,000,000 records waiting: RSS
flat at 151 MB with CPython's thresholds, 173 MB rising to 217 MB and a 407 MB peak
with 20,000).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

#: Allocations between two young-generation collections while serving (default 700).
GC_THRESHOLD: Final = 20_000


@contextmanager
def collector_for_serving(young_threshold: int | None = GC_THRESHOLD) -> Iterator[None]:
    """Tune the garbage collector for serving; afterwards restore its thresholds, and
    unfreeze what it froze unless objects were frozen already. ``young_threshold``
    None keeps CPython's."""
    threshold = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    if young_threshold is not None:
        gc.set_threshold(young_threshold, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if not frozen_before:
            gc.unfreeze()
