"""The delivery ledger: one test (or a few) per rule of the at-least-once contract in
processor/ledger.py's docstring, each failing if its rule broke."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.kafka.api import Record, TopicPartition
from processor.ledger import DEAD_LETTER_COMMIT_S, Ledger, PartitionLedger, Ticket

TP = TopicPartition("web.pageviews", 0)
OTHER = TopicPartition("web.clicks", 1)
INTERVAL_S = 5.0


def track(ledger: PartitionLedger, offset: int, work: int, timestamp: float = 0.0) -> Ticket | None:
    record = Record(ledger.tp.topic, ledger.tp.partition, offset, b"{}")
    return ledger.track(
        offset, work, timestamp, record, (ledger.tp.topic, ledger.tp.partition, offset)
    )


def tickets(ledger: PartitionLedger, offsets: range | list[int], work: int = 1) -> list[Ticket]:
    out = []
    for offset in offsets:
        ticket = track(ledger, offset, work)
        assert ticket is not None
        out.append(ticket)
    return out


# -- rule 1: tracked, with its work; no work is done at once ----------------------------------


def test_a_record_without_work_is_done_at_once_and_gets_no_ticket() -> None:
    ledger = Ledger(INTERVAL_S).assign(TP)
    assert track(ledger, 5, 0) is None  # filtered out on purpose
    assert ledger.position() == 6
    assert ledger.pending() == 0


def test_records_must_be_tracked_in_offset_order() -> None:
    ledger = Ledger(INTERVAL_S).assign(TP)
    track(ledger, 3, 1)
    with pytest.raises(RuntimeError, match="tracked after"):
        track(ledger, 2, 1)


# -- rule 2: done only when every unit is accepted or dead-lettered ---------------------------


def test_a_record_is_done_only_when_every_unit_is() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    (ticket,) = tickets(ledger, [0], work=3)  # two events and a dead letter
    assert ledgers.accepted(ticket)
    assert ledgers.dead_lettered(ticket)
    assert ledger.position() == 0
    assert ledger.pending() == 1
    assert ledgers.accepted(ticket)
    assert ledger.position() == 1
    assert ledger.pending() == 0


def test_finishing_more_units_than_tracked_is_refused() -> None:
    ledgers = Ledger(INTERVAL_S)
    (ticket,) = tickets(ledgers.assign(TP), [0])
    ledgers.accepted(ticket)
    with pytest.raises(RuntimeError, match="finished more often than tracked"):
        ledgers.accepted(ticket)


# -- rule 3: the contiguous watermark ----------------------------------------------------------


def test_out_of_order_completions_commit_only_the_contiguous_watermark() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    t10, t11, t12, t13, t14 = tickets(ledger, range(10, 15))
    assert ledger.position() == 10
    ledgers.accepted(t12)
    ledgers.accepted(t13)
    assert ledger.position() == 10  # 10 and 11 are still out
    ledgers.accepted(t10)
    assert ledger.position() == 11
    ledgers.accepted(t11)
    assert ledger.position() == 14
    ledgers.accepted(t14)
    assert ledger.position() == 15


def test_gaps_and_records_without_work_move_the_position_past_them() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    track(ledger, 5, 0)
    (t9,) = tickets(ledger, [9], work=2)  # offsets 6-8 compacted away
    track(ledger, 10, 0)
    assert ledger.position() == 9
    ledgers.accepted(t9)
    assert ledger.position() == 9
    ledgers.dead_lettered(t9)
    assert ledger.position() == 11


records = st.lists(
    st.tuples(st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=3)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300)
@given(records, st.randoms(use_true_random=False))
def test_the_position_is_always_the_lowest_offset_not_done(
    spec: list[tuple[int, int]], rnd: random.Random
) -> None:
    """Any interleaving of completions: the position is the lowest offset with work left."""
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    offset = 0
    units: list[Ticket] = []  # one entry per outstanding unit
    for gap, work in spec:
        offset += gap
        ticket = track(ledger, offset, work)
        units += [ticket] * work if ticket is not None else []
    last = offset
    rnd.shuffle(units)
    for i, unit in enumerate(units):
        (ledgers.accepted if i % 2 else ledgers.dead_lettered)(unit)
        unfinished = [t.offset for t in units if t.remaining > 0]
        assert ledger.position() == (min(unfinished) if unfinished else last + 1)
    assert ledger.position() == last + 1
    assert ledger.pending() == 0


# -- rule 4: commit timing, and a refused commit is made again ---------------------------------


def test_positions_are_due_once_the_interval_passed_and_only_when_they_moved() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    track(ledger, 0, 0)
    assert ledgers.due(INTERVAL_S) == {TP: 1}
    ledgers.committed({TP: 1})
    assert ledgers.due(INTERVAL_S + 1) == {}  # not yet due
    assert ledgers.due(2 * INTERVAL_S) == {}  # due, but nothing moved
    track(ledger, 1, 0)
    assert ledgers.due(2 * INTERVAL_S + 1) == {}  # due again only an interval later
    assert ledgers.due(3 * INTERVAL_S) == {TP: 2}


def test_a_dead_letter_brings_the_next_commit_forward() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    assert ledgers.due(INTERVAL_S) == {}
    (ticket,) = tickets(ledger, [0])
    ledgers.dead_lettered(ticket)
    assert ledgers.due(INTERVAL_S + DEAD_LETTER_COMMIT_S / 2) == {}
    assert ledgers.due(INTERVAL_S + 2 * DEAD_LETTER_COMMIT_S) == {TP: 1}
    # An accepted event does not: it waits for the interval.
    (ticket,) = tickets(ledger, [1])
    ledgers.accepted(ticket)
    assert ledgers.due(INTERVAL_S + 4 * DEAD_LETTER_COMMIT_S) == {}


def test_a_refused_commit_is_made_again_with_the_same_position() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    track(ledger, 0, 0)
    positions = ledgers.due(INTERVAL_S)
    ledgers.committed(positions)
    ledgers.commit_failed([TP])
    assert ledgers.due(2 * INTERVAL_S) == {TP: 1}


def test_the_final_and_handover_positions() -> None:
    ledgers = Ledger(INTERVAL_S)
    a, b = ledgers.assign(TP), ledgers.assign(OTHER)
    (ticket,) = tickets(a, [0])
    track(b, 7, 0)
    assert ledgers.positions() == {TP: 0, OTHER: 8}
    ledgers.committed({OTHER: 8}, confirmed=True)
    # A revoke commits synchronously what the broker has not confirmed, and only that.
    assert ledgers.handover([a, b]) == {TP: 0}
    ledgers.accepted(ticket)
    assert ledgers.handover([a, b]) == {TP: 1}


# -- rule 5: fencing -------------------------------------------------------------------------------


def test_work_finished_for_a_revoked_assignment_changes_nothing() -> None:
    ledgers = Ledger(INTERVAL_S)
    old = ledgers.assign(TP)
    (late,) = tickets(old, [0])
    fenced = ledgers.fence(TP)
    assert fenced is old
    assert not ledgers.live(late)
    new = ledgers.assign(TP)
    tickets(new, [0])
    assert ledgers.accepted(late) is False
    assert ledgers.dead_lettered(late) is False
    assert new.position() == 0
    assert new.pending() == 1
    assert ledgers.due(INTERVAL_S) == {TP: 0}


def test_a_new_assignment_fences_the_old_one_and_a_fenced_partition_is_not_committed() -> None:
    ledgers = Ledger(INTERVAL_S)
    old = ledgers.assign(TP)
    track(old, 0, 0)
    ledgers.fence(TP)
    assert ledgers.get(TP) is None
    assert ledgers.due(INTERVAL_S) == {}
    assert ledgers.positions() == {}
    again = ledgers.assign(TP)
    assert again is not old
    assert not old.active
    assert again.active


def test_a_late_dead_letter_of_a_fenced_partition_does_not_bring_a_commit_forward() -> None:
    ledgers = Ledger(INTERVAL_S)
    (late,) = tickets(ledgers.assign(TP), [0])
    ledgers.fence(TP)
    ledgers.assign(OTHER)
    ledgers.due(INTERVAL_S)
    ledgers.dead_lettered(late)
    track(ledgers.get(OTHER) or ledgers.assign(OTHER), 0, 0)
    assert ledgers.due(INTERVAL_S + DEAD_LETTER_COMMIT_S) == {}


# -- rule 6: redelivery ------------------------------------------------------------------------------


def test_an_offset_tracked_before_in_this_assignment_is_seen() -> None:
    ledgers = Ledger(INTERVAL_S)
    ledger = ledgers.assign(TP)
    assert not ledger.seen(0)
    tickets(ledger, [0, 1, 2])
    assert ledger.seen(0)
    assert ledger.seen(2)
    assert not ledger.seen(3)
    # A new assignment starts afresh: the records are read again from the commit.
    assert not ledgers.assign(TP).seen(0)


# -- what the loop's gauges read ---------------------------------------------------------------------


def test_pending_and_the_oldest_record_holding_a_position_back() -> None:
    ledgers = Ledger(INTERVAL_S)
    a, b = ledgers.assign(TP), ledgers.assign(OTHER)
    track(a, 0, 1, timestamp=100.0)
    (early,) = [t for t in [track(b, 0, 1, timestamp=50.0)] if t is not None]
    assert ledgers.oldest_pending_timestamp() == 50.0
    ledgers.accepted(early)
    assert ledgers.oldest_pending_timestamp() == 100.0
    assert ledgers.pending() == 1
    assert len(ledgers) == 2
    assert {p.tp for p in ledgers} == {TP, OTHER}
