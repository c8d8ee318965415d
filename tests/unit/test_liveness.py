"""The stall watch: a partition with lag that makes no progress shows, whatever the
member believes about it."""

from __future__ import annotations

import pytest

from processor.kafka.api import TopicPartition
from processor.liveness import StallWatch

TP = TopicPartition("web.pageviews", 3)
OTHER = TopicPartition("web.clicks", 0)


def test_a_partition_with_lag_whose_position_never_moves_stalls_after_the_timeout() -> None:
    watch = StallWatch(stall_timeout_s=60)
    watch.assigned(TP, now=0)
    for t in (10, 30, 59):
        idle = watch.observe({TP: 500}, {TP: 100}, {TP: 100}, now=t)
        assert idle[TP] == t
        assert watch.describe() is None
    watch.observe({TP: 500}, {TP: 100}, {TP: 100}, now=61)
    (stall,) = watch.stalled()
    assert (stall.tp, stall.lag, stall.seconds) == (TP, 500, 61)
    assert watch.describe() == (
        "partition web.pageviews[3] has lag 500 and made no progress for 61s"
    )


def test_a_moving_fetch_position_or_watermark_is_progress() -> None:
    watch = StallWatch(stall_timeout_s=60)
    watch.assigned(TP, now=0)
    watch.observe({TP: 500}, {TP: 100}, {TP: 90}, now=50)
    assert watch.observe({TP: 500}, {TP: 200}, {TP: 90}, now=100)[TP] == 0  # fetched
    assert watch.observe({TP: 500}, {TP: 200}, {TP: 150}, now=150)[TP] == 0  # committed
    assert watch.observe({TP: 500}, {TP: 200}, {TP: 150}, now=200)[TP] == 50
    assert watch.stalled() == []


def test_no_lag_is_never_a_stall_however_long_nothing_moves() -> None:
    watch = StallWatch(stall_timeout_s=60)
    watch.assigned(TP, now=0)
    for t in range(0, 1000, 100):
        assert watch.observe({TP: 0}, {TP: 7}, {TP: 7}, now=t)[TP] == 0
    assert watch.stalled() == []
    # Records arrive and nothing reads them: the clock runs from the last reading
    # without lag (the records may have come any time after it).
    assert watch.observe({TP: 3}, {TP: 7}, {TP: 7}, now=1000)[TP] == 100
    assert watch.observe({TP: 3}, {TP: 7}, {TP: 7}, now=1070)[TP] == 170
    assert watch.stalled()[0].tp == TP


def test_an_unknown_lag_is_not_shown_as_a_stall_but_does_not_restart_the_clock() -> None:
    watch = StallWatch(stall_timeout_s=60)
    watch.assigned(TP, now=0)
    assert watch.observe({}, {}, {}, now=100)[TP] == 0
    assert watch.stalled() == []
    assert watch.observe({TP: 5}, {}, {}, now=101)[TP] == 101
    assert watch.stalled()[0].seconds == 101


def test_the_worst_stall_is_named_first_and_a_revoked_partition_is_forgotten() -> None:
    watch = StallWatch(stall_timeout_s=10)
    watch.assigned(TP, now=0)
    watch.assigned(OTHER, now=5)
    watch.observe({TP: 1, OTHER: 2}, {TP: 0, OTHER: 0}, {}, now=30)
    assert [s.tp for s in watch.stalled()] == [TP, OTHER]
    assert str(watch.describe()).endswith("(and 1 more)")
    watch.forget(TP)
    watch.observe({OTHER: 2}, {OTHER: 0}, {}, now=31)
    assert [s.tp for s in watch.stalled()] == [OTHER]
    # Re-assigned: a new clock.
    watch.assigned(TP, now=31)
    assert watch.observe({TP: 1, OTHER: 2}, {TP: 0, OTHER: 0}, {}, now=32)[TP] == 1


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stall_timeout_s"):
        StallWatch(0)
