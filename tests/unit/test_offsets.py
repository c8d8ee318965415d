"""The offset tracker: the committed position never passes a record that is not done."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.offsets import OffsetTracker, PartitionTracker, TopicPartition

TP = TopicPartition("web.pageviews", 0)


def test_out_of_order_completion_commits_only_the_contiguous_watermark() -> None:
    t = PartitionTracker(TP)
    for offset in range(10, 15):
        t.track(offset, work=1, timestamp=0.0)
    assert t.position() == 10
    t.finish(12)
    t.finish(13)
    assert t.position() == 10  # 10 and 11 are still out
    t.finish(10)
    assert t.position() == 11
    t.finish(11)
    assert t.position() == 14
    t.finish(14)
    assert t.position() == 15


def test_filtered_records_and_gaps_move_the_position_past_them() -> None:
    t = PartitionTracker(TP)
    t.track(5, work=0, timestamp=0.0)
    assert t.position() == 6
    t.track(9, work=2, timestamp=0.0)  # offsets 6-8 compacted away
    t.track(10, work=0, timestamp=0.0)
    assert t.position() == 9
    t.finish(9)
    assert t.position() == 9
    t.finish(9)
    assert t.position() == 11


def test_to_commit_only_when_the_position_moved() -> None:
    t = PartitionTracker(TP)
    assert t.to_commit() is None
    t.track(0, work=1, timestamp=0.0)
    assert t.to_commit() == 0
    t.committed = 0
    assert t.to_commit() is None
    t.finish(0)
    assert t.to_commit() == 1


def test_revoked_tracker_ignores_late_completions() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    old.track(0, work=1, timestamp=0.0)
    tracker.revoke(TP)
    new = tracker.assign(TP)
    new.track(0, work=1, timestamp=0.0)
    old.finish(0)  # a completion from before the revoke: fenced
    assert new.position() == 0
    assert tracker.to_commit() == {TP: 0}
    assert old.active is False


def test_errors_on_misuse() -> None:
    t = PartitionTracker(TP)
    t.track(3, work=1, timestamp=0.0)
    with pytest.raises(ValueError, match="tracked after"):
        t.track(2, work=1, timestamp=0.0)
    with pytest.raises(ValueError, match="not outstanding"):
        t.finish(7)
    t.finish(3)
    with pytest.raises(ValueError, match="not outstanding"):
        t.finish(3)


def test_oldest_pending_timestamp() -> None:
    tracker = OffsetTracker()
    a = tracker.assign(TP)
    b = tracker.assign(TopicPartition("web.clicks", 1))
    a.track(0, work=1, timestamp=100.0)
    b.track(0, work=1, timestamp=50.0)
    assert tracker.oldest_pending_timestamp() == 50.0
    b.finish(0)
    assert tracker.oldest_pending_timestamp() == 100.0
    assert tracker.pending() == 1


records = st.lists(
    st.tuples(st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=3)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300)
@given(records, st.randoms(use_true_random=False))
def test_position_is_always_the_lowest_unfinished_offset(
    spec: list[tuple[int, int]], rnd: object
) -> None:
    """Any interleaving of completions: the position is the lowest offset with work left."""
    t = PartitionTracker(TP)
    offset = 0
    units: list[int] = []  # one entry per outstanding unit: its offset
    remaining: dict[int, int] = {}
    for gap, work in spec:
        offset += gap
        t.track(offset, work=work, timestamp=0.0)
        remaining[offset] = work
        units += [offset] * work
    last = offset
    rnd.shuffle(units)  # type: ignore[attr-defined]
    for unit in units:
        t.finish(unit)
        remaining[unit] -= 1
        unfinished = [o for o, left in remaining.items() if left > 0]
        expected = min(unfinished) if unfinished else last + 1
        assert t.position() == expected
    assert t.position() == last + 1
    assert t.pending() == 0
