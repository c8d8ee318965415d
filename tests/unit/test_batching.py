"""Batching per event source, source id and test code, by count and linger time."""

from __future__ import annotations

import tracemalloc

import pytest

from processor.batching import Batcher, PendingEvent
from processor.mapping import MappedEvent
from processor.payload import BatchKey


def event(
    pixel: str = "PIXEL000A", test: str | None = None, n: int = 0, source: str = "web"
) -> MappedEvent:
    payload = {"event": "ViewContent", "event_time": 1_767_225_600, "event_id": str(n)}
    return MappedEvent.of("m", source, pixel, test, payload)


def test_batch_closes_at_max_events() -> None:
    b = Batcher(max_events=3, linger_s=10)
    assert b.add("r1", event(n=1), 0.0) is None
    assert b.add("r2", event(n=2), 0.0) is None
    full = b.add("r3", event(n=3), 0.0)
    assert full is not None
    assert [i.ref for i in full.items] == ["r1", "r2", "r3"]
    assert b.buffered == 0


def test_batches_are_kept_apart_by_pixel_and_test_code() -> None:
    b = Batcher(max_events=1000, linger_s=0.2)
    b.add(1, event("PIXEL000A"), 0.0)
    b.add(2, event("PIXEL000B"), 0.0)
    b.add(3, event("PIXEL000A", "TEST1"), 0.1)
    assert b.due(0.15) == []
    due = b.due(0.2)
    assert {x.key for x in due} == {
        BatchKey("web", "PIXEL000A", None),
        BatchKey("web", "PIXEL000B", None),
    }
    assert b.next_due() == pytest.approx(0.3)
    assert [x.key for x in b.flush()] == [BatchKey("web", "PIXEL000A", "TEST1")]
    assert b.buffered == 0
    assert b.next_due() is None


def test_batches_are_kept_apart_by_event_source_even_with_the_same_id() -> None:
    b = Batcher(max_events=2, linger_s=1)
    for source in ("web", "app", "offline", "crm"):
        assert b.add(source, event("7312345678901234567", source=source), 0.0) is None
    assert b.buffered == 4
    full = b.add("crm-2", event("7312345678901234567", n=2, source="crm"), 0.0)
    assert full is not None
    assert full.key == BatchKey("crm", "7312345678901234567", None)
    assert [i.ref for i in full.items] == ["crm", "crm-2"]
    assert sorted(x.key.event_source for x in b.flush()) == ["app", "offline", "web"]


def test_discard_drops_events_of_revoked_partitions() -> None:
    b = Batcher(max_events=1000, linger_s=1)
    for ref in ("keep-1", "drop-1", "keep-2", "drop-2"):
        b.add(ref, event(), 0.0)
    b.add("drop-3", event("PIXEL000B"), 0.0)
    dropped = b.discard(lambda ref: ref.startswith("keep"))
    assert sorted(d.ref for d in dropped) == ["drop-1", "drop-2", "drop-3"]
    assert b.buffered == 2
    (left,) = b.flush()
    assert [i.ref for i in left.items] == ["keep-1", "keep-2"]


def test_split_halves_a_batch() -> None:
    b = Batcher(max_events=5, linger_s=1)
    full = None
    for n in range(5):
        full = b.add(n, event(n=n), 0.0)
    assert full is not None
    left, right = full.split()
    assert [i.ref for i in left.items] == [0, 1]
    assert [i.ref for i in right.items] == [2, 3, 4]


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="max_events"):
        Batcher(max_events=1001)
    with pytest.raises(ValueError, match="linger"):
        Batcher(linger_s=-1)


def test_a_buffered_event_holds_its_json_and_not_much_more() -> None:
    # What waits for TikTok is bytes: no payload dict, and no encoder's working buffer
    # (orjson's own result keeps 4 kB allocated for any event).
    events = [event(n=n) for n in range(200)]
    b = Batcher(max_events=1000, linger_s=10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [MappedEvent.of("m", "web", "PIXEL000A", None, dict(e.payload)) for e in events]
        for i, e in enumerate(kept):
            b.add(i, e, 0.0)
        del kept, e
        per_event = (tracemalloc.get_traced_memory()[0] - before) / len(events)
    finally:
        tracemalloc.stop()
    size = len(events[0].data)
    assert size < per_event < size + 400, per_event
    [batch] = b.flush()
    assert all(item.__class__ is PendingEvent for item in batch.items)
    assert batch.items[0].payload == events[0].payload
