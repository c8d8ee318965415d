"""The run loop against the in-memory Kafka (:mod:`processor.kafka.memory`) and a
scripted sender: commits, dead letters, backpressure, halts, rebalances and stops,
deterministically and without a broker.

Commits are asserted on what the in-memory broker holds (``source.committed``) and on
every commit the member made (``source.commits``). The same behaviours are proven
against a real Kafka broker and the sandbox in tests/integration/test_pipeline.py;
these pin down the loop's own logic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from processor.batching import Batch, PendingEvent
from processor.config import Config, DeadLetterConfig, load_config
from processor.dlq import DeadLetterWriter, header_map
from processor.kafka.api import Record, TopicPartition
from processor.kafka.memory import Commit, MemoryProducer, MemorySource
from processor.loop import NO_PARTITIONS, Processor
from processor.metrics import Metrics
from processor.sample import ClickstreamGenerator
from processor.transform import build_transformer
from tests.conftest import EXAMPLE_CONFIG

NOW = 1_767_225_600.0
TOPIC = "web.pageviews"
TP0 = TopicPartition(TOPIC, 0)
TP1 = TopicPartition(TOPIC, 1)
DLQ_TOPIC = "clickstream.dlq"
INVALID_EVENT_ID = "40002 Invalid value for data[0].event_id"
TOKEN_INVALID = "40105 access token is invalid"


# -- the TikTok side ------------------------------------------------------------------------


@dataclass
class Outcome:
    batch: Batch
    accepted: list[PendingEvent]
    rejected: list[tuple[PendingEvent, str]] = field(default_factory=list)


Reject = Callable[[PendingEvent], str | None]


class FakeSender:
    """Holds submitted batches until the test completes them, in any order.

    ``on_wait`` runs whenever the loop waits for completions (a drain on revoke or
    stop): what requests finishing during that wait look like.
    """

    def __init__(self) -> None:
        self.submitted: list[Batch] = []  # every batch, in the order submitted
        self.in_flight: list[Batch] = []  # submitted and not completed yet
        self.halted: str | None = None
        self.partly_halted: str | None = None  # some tenants halted, others delivering
        self.held_events = 0  # events a halted tenant holds
        self.on_wait: Callable[[], object] = lambda: None
        self._completed: list[Outcome] = []

    def start(self) -> None:
        pass

    def submit(self, batch: Batch) -> None:
        self.submitted.append(batch)
        self.in_flight.append(batch)

    def accept(self, batch: Batch, reject: Reject | None = None) -> None:
        """Complete ``batch``: each event accepted, or rejected for good when ``reject``
        gives a reason for it."""
        self.in_flight.remove(batch)
        verdicts = [(item, reject(item) if reject else None) for item in batch.items]
        accepted = [item for item, reason in verdicts if reason is None]
        rejected = [(item, reason) for item, reason in verdicts if reason is not None]
        self._completed.append(Outcome(batch, accepted, rejected))

    def complete(
        self, batches: Iterable[Batch] | None = None, reject: Reject | None = None
    ) -> None:
        """Complete those of ``batches`` (default: all) still in flight."""
        for batch in list(self.in_flight if batches is None else batches):
            if batch in self.in_flight:
                self.accept(batch, reject)

    def poll_completions(self) -> Sequence[Outcome]:
        out, self._completed = self._completed, []
        return out

    def wait(self, timeout: float) -> bool:
        self.on_wait()
        return bool(self._completed)

    def close(self, timeout: float) -> None:
        pass


# -- records --------------------------------------------------------------------------------


def page_views(partition: int, count: int, *, important: bool = True) -> list[bytes]:
    """``count`` page-view record values (deterministic for ``partition``); important
    ones map to a ViewContent event, the others are filtered out."""
    gen = ClickstreamGenerator(seed=partition, start=NOW - 60)
    out: list[bytes] = []
    while len(out) < count:
        record = next(gen.records(1))
        if record.kind == "page_view" and (record.expected_event is not None) == important:
            out.append(record.value)
    return out


def publish(source: MemorySource, partition: int, values: Iterable[bytes]) -> list[Record]:
    """Append ``values`` to ``web.pageviews[partition]``, with a key, a header and a
    timestamp as a producer would give them."""
    return [
        source.append(TOPIC, partition, value, key=b"key", headers=[("h", b"v")], timestamp=NOW)
        for value in values
    ]


def offsets(batch: Batch) -> list[int]:
    return [item.ref.offset for item in batch.items]


def event_ids(batch: Batch) -> list[str]:
    return [item.payload["event_id"] for item in batch.items]


# -- the harness ----------------------------------------------------------------------------


class Clock:
    """Moves a second at every reading: each turn of the loop is later than the last, so
    each of the harness's (10 ms) commit intervals has passed, and a drain's deadline
    is reached by reading the clock, never by sleeping."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@dataclass
class Harness:
    processor: Processor
    source: MemorySource
    sender: FakeSender
    metrics: Metrics
    producer: MemoryProducer | None
    clock: Clock

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            assert self.processor.turn()

    def publish(self, partition: int, values: Iterable[bytes]) -> list[Record]:
        return publish(self.source, partition, values)

    def commits_of(self, tp: TopicPartition) -> list[int]:
        """Every position committed for ``tp``, in order (refused ones included)."""
        return [c.positions[tp] for c in self.source.commits if tp in c.positions]


def harness(
    *,
    dead_letters: bool = True,
    acknowledge: bool = True,
    replay: bool = False,
    report_end: bool = False,
    **delivery: Any,
) -> Harness:
    """A started processor owning web.pageviews[0] and [1]. ``acknowledge``: the
    dead-letter broker acknowledges at the producer's next poll (False: only when the
    test calls ``producer.deliver()``)."""
    config: Config = load_config(EXAMPLE_CONFIG, environ={})
    config = replace(
        config,
        delivery=replace(
            config.delivery,
            **{"commit_interval_ms": 10, "linger_ms": 0, "drain_timeout_s": 0.2, **delivery},
        ),
        dead_letter=DeadLetterConfig(max_ratio=1.0, window=10, max_consecutive=5),
    )
    transformer, _ = build_transformer(config, lambda: NOW)
    metrics = Metrics()
    sender = FakeSender()
    source = MemorySource([TP0, TP1], report_end=report_end)
    producer = MemoryProducer(acknowledge=acknowledge) if dead_letters else None
    writer = DeadLetterWriter(producer, DLQ_TOPIC, lambda: NOW) if producer else None
    clock = Clock()
    processor = Processor(
        config, transformer, metrics, sender, source,
        dead_letters=writer, replay=replay, clock=clock,
    )  # fmt: skip
    processor.start()
    return Harness(processor, source, sender, metrics, producer, clock)


# -- commits --------------------------------------------------------------------------------


def test_out_of_order_completions_commit_only_the_watermark() -> None:
    h = harness(max_batch_events=1)
    h.publish(0, page_views(0, 4))
    h.turn(2)
    assert len(h.sender.submitted) == 4
    first, second, third, fourth = h.sender.submitted
    h.sender.accept(third)
    h.sender.accept(second)
    h.turn(2)
    assert h.source.committed.get(TP0, 0) == 0  # offset 0 still in flight
    h.sender.accept(first)
    h.turn(2)
    assert h.source.committed[TP0] == 3  # 0-2 done, 3 in flight
    h.sender.accept(fourth)
    h.turn(2)
    assert h.source.committed[TP0] == 4
    assert h.commits_of(TP0) == sorted(h.commits_of(TP0))  # never moved back


def test_filtered_records_commit_immediately() -> None:
    h = harness()
    h.publish(1, page_views(1, 3, important=False))
    h.turn(2)
    assert h.sender.submitted == []
    assert h.source.committed == {TP1: 3}
    assert h.metrics.value("records_filtered_total", {"topic": TOPIC}) == 3


def test_a_commit_the_broker_refuses_is_retried_with_the_same_position() -> None:
    h = harness(max_batch_events=1)
    h.publish(0, page_views(0, 2))
    h.turn()
    h.sender.complete()
    h.source.refuse_commits("REBALANCE_IN_PROGRESS")
    h.turn()  # the commit is sent; the refusal arrives inside consume()
    assert h.source.commits == [Commit({TP0: 2}, asynchronous=True, accepted=False)]
    assert h.metrics.value("commit_failures_total") == 1
    h.source.refuse_commits(None)
    h.turn()
    assert h.source.commits[-1] == Commit({TP0: 2}, asynchronous=True, accepted=True)
    assert h.source.committed == {TP0: 2}
    h.turn(2)
    assert len(h.source.commits) == 2  # accepted: not committed again
    assert h.metrics.value("commit_failures_total") == 1


# -- dead letters ---------------------------------------------------------------------------


def test_rejected_record_is_done_only_once_its_dead_letter_is_acknowledged() -> None:
    h = harness(acknowledge=False)  # the broker is slow to acknowledge
    h.publish(0, [b"{not json", *page_views(0, 1, important=False)])
    h.turn(3)
    assert h.source.committed.get(TP0, 0) == 0
    assert h.producer is not None
    (letter,) = h.producer.produced
    assert letter.topic == DLQ_TOPIC
    assert (letter.key, letter.value) == (b"key", b"{not json")
    assert header_map(letter.headers)["dlq.stage"] == "decode"
    h.producer.deliver()  # the broker acknowledges
    h.turn(2)
    assert h.source.committed[TP0] == 2
    assert h.metrics.value("records_dead_lettered_total", {"topic": TOPIC, "stage": "decode"}) == 1


def test_api_rejections_are_dead_lettered_with_tiktoks_message() -> None:
    h = harness(max_batch_events=2)
    h.publish(0, page_views(0, 2))
    h.turn(2)
    (batch,) = h.sender.submitted
    h.sender.accept(batch, reject=lambda item: INVALID_EVENT_ID if item.ref.offset == 1 else None)
    h.turn(3)
    assert h.producer is not None
    (letter,) = h.producer.produced
    headers = header_map(letter.headers)
    assert (headers["dlq.stage"], headers["dlq.source.offset"]) == ("api", "1")
    assert headers["dlq.reason"] == INVALID_EVENT_ID
    assert headers["dlq.mapping"] == "important-page-views"
    assert h.source.committed[TP0] == 2


def test_a_dead_letter_is_committed_past_soon_after_its_acknowledgement() -> None:
    # Offsets otherwise wait a minute; a crash in that minute would write it again.
    h = harness(commit_interval_ms=60_000)
    h.turn()  # the first commit pass
    h.publish(0, [b"{not json"])
    h.turn(3)  # consumed, dead-lettered, acknowledged (the broker acks at the next poll)
    assert h.source.committed.get(TP0) == 1
    h.publish(0, page_views(0, 1, important=False))
    h.turn(3)
    assert h.source.committed[TP0] == 1  # a filtered record waits for the interval as before


def test_dead_letter_limit_stops_the_processor() -> None:
    h = harness()
    h.publish(0, [b"junk"] * 10)
    keep_going = True
    for _ in range(5):
        keep_going = h.processor.turn()
        if not keep_going:
            break
    assert not keep_going
    assert h.processor.stop_reason is not None
    assert "5 records in a row were dead-lettered" in h.processor.stop_reason
    assert h.processor.shutdown() == 1


def test_rejection_without_a_dead_letter_topic_stops_rather_than_skips() -> None:
    h = harness(dead_letters=False)
    h.publish(0, [orjson.dumps([1])])
    assert h.processor.turn() is False
    assert "no kafka.dead_letter_topic is configured" in (h.processor.stop_reason or "")
    assert h.source.committed.get(TP0, 0) == 0
    assert h.processor.shutdown() == 1
    assert h.source.committed.get(TP0, 0) == 0  # the stop's commit does not skip it either


def test_tiktok_rejecting_every_event_trips_the_dead_letter_limit() -> None:
    # max_consecutive is 5 in the harness: every record maps, and TikTok refuses each event.
    h = harness(max_batch_events=1, acknowledge=False)  # letters not acknowledged yet
    h.publish(0, page_views(0, 8))
    h.turn(2)
    stopped = False
    for _ in range(10):
        h.sender.complete(reject=lambda item: INVALID_EVENT_ID)
        if not h.processor.turn():
            stopped = True
            break
    assert stopped
    assert h.processor.stop_reason is not None
    assert "dead-letter limit reached: 5 records in a row" in h.processor.stop_reason
    assert "api: 40002" in h.processor.stop_reason
    assert h.processor.shutdown() == 1
    # Nothing was committed past a record whose dead letter the broker has not acknowledged.
    assert all(position == 0 for position in h.commits_of(TP0))
    assert h.source.committed.get(TP0, 0) == 0


def test_past_the_dead_letter_limit_rejections_are_left_uncommitted_for_the_restart() -> None:
    # One batch of 8 that TikTok refuses whole: the 5th dead letter trips the limit (5 in a
    # row in the harness); the other 3 are neither written nor committed past.
    h = harness(max_batch_events=8)
    h.publish(0, page_views(0, 8))
    h.turn(2)
    h.sender.complete(reject=lambda item: INVALID_EVENT_ID)
    assert h.processor.turn() is False
    assert h.processor.shutdown() == 1
    assert h.producer is not None
    assert [header_map(p.headers)["dlq.source.offset"] for p in h.producer.produced] == [
        "0", "1", "2", "3", "4",
    ]  # fmt: skip
    assert h.source.committed.get(TP0, 0) == 5
    assert h.metrics.value("records_dead_lettered_total", {"topic": TOPIC, "stage": "api"}) == 5


# -- backpressure and halts -----------------------------------------------------------------


def test_backpressure_pauses_above_the_limit_and_resumes_below_half() -> None:
    h = harness(max_batch_events=1, max_buffered_events=4)
    *first_ten, later, last = page_views(0, 12)
    h.publish(0, first_ten)
    h.turn(2)
    assert h.source.paused
    assert h.source.pause_calls == 1
    assert h.metrics.value("paused") == 1
    outstanding = list(h.sender.submitted)
    assert len(outstanding) == 10
    h.publish(0, [later, last])
    h.turn()
    assert len(h.sender.submitted) == 10  # a paused member fetches nothing
    h.sender.accept(outstanding[0])
    h.turn()
    assert h.source.paused  # 9 still out: above half of 4
    h.sender.complete()
    h.turn(2)
    assert not h.source.paused
    assert h.metrics.value("paused") == 0
    assert len(h.sender.submitted) == 12  # reading resumed


def test_halted_sender_pauses_and_commits_nothing_past_held_events() -> None:
    h = harness(max_batch_events=1)
    h.publish(0, page_views(0, 2))
    h.turn(2)
    h.sender.halted = TOKEN_INVALID
    h.turn(2)
    assert h.source.paused
    assert h.processor.ready == (False, f"halted: {TOKEN_INVALID}")
    assert h.source.committed.get(TP0, 0) == 0
    h.sender.halted = None
    h.sender.complete()
    h.turn(2)
    assert not h.source.paused
    assert h.source.committed[TP0] == 2


def test_one_halted_pixel_fails_readiness_but_pauses_nothing_and_batches_still_go_out() -> None:
    h = harness(max_batch_events=1)
    h.sender.partly_halted = f"pixel shop-eu: {TOKEN_INVALID}"
    h.publish(0, page_views(0, 2))
    h.turn(2)
    assert not h.source.paused
    assert len(h.sender.submitted) == 2  # the sender holds the halted pixel's batches
    assert h.processor.ready == (False, f"halted: pixel shop-eu: {TOKEN_INVALID}")
    (held, delivered) = h.sender.submitted
    h.sender.complete([delivered])
    h.turn(2)
    assert h.source.committed.get(TP0, 0) == 0  # not past the held record
    h.sender.partly_halted = None
    h.sender.complete([held])
    h.turn(2)
    assert h.source.committed[TP0] == 2
    assert h.processor.ready == (True, "ok")


# -- rebalances -----------------------------------------------------------------------------


def test_revoke_waits_commits_the_watermark_and_fences_late_completions() -> None:
    h = harness(max_batch_events=1, drain_timeout_s=30.0)
    h.publish(0, page_views(0, 3))
    h.turn(2)
    first, second, third = h.sender.submitted
    h.sender.accept(first)
    h.sender.on_wait = lambda: h.sender.complete([second])  # finishes during the drain
    before = h.clock.now
    h.source.revoke([TP0])  # the drain times out: 2 is still in flight
    assert h.clock.now - before >= 30.0  # it waited the drain timeout
    assert h.source.commits[-1] == Commit({TP0: 2}, asynchronous=False, accepted=True)
    commits = len(h.source.commits)
    h.sender.accept(third)  # late: the partition is another member's now
    h.turn(2)
    assert h.source.commits[commits:] == []
    assert h.source.committed == {TP0: 2}
    assert h.metrics.value("buffered_events") == 0


def test_a_revoke_while_halted_does_not_wait_for_the_drain_timeout() -> None:
    h = harness(max_batch_events=1, drain_timeout_s=30.0)
    h.publish(0, page_views(0, 2))
    h.turn(2)
    h.sender.halted = TOKEN_INVALID
    h.turn()
    before = h.clock.now  # the clock advances a second per reading
    h.source.revoke([TP0])  # waiting for the drain timeout would take 30 fake seconds
    assert h.clock.now - before < 5
    assert h.source.commits[-1] == Commit({TP0: 0}, asynchronous=False, accepted=True)


def test_a_revoke_while_one_pixel_holds_what_is_left_does_not_wait_for_the_drain() -> None:
    h = harness(max_batch_events=1, drain_timeout_s=30.0)
    h.publish(0, page_views(0, 2))
    h.turn(2)
    first, _second = h.sender.submitted
    h.sender.accept(first)
    h.sender.partly_halted = f"pixel shop-eu: {TOKEN_INVALID}"
    h.sender.held_events = 1  # the second event waits for shop-eu's token
    before = h.clock.now
    h.source.revoke([TP0])  # no wait can finish a held event: 30 fake seconds otherwise
    assert h.clock.now - before < 5
    assert h.source.commits[-1] == Commit({TP0: 1}, asynchronous=False, accepted=True)
    # While something not held is still out, the revoke waits for it (up to the drain).
    h.publish(1, page_views(1, 2))
    h.turn(2)
    h.sender.held_events = 1
    h.sender.on_wait = h.sender.complete
    h.source.revoke([TP1])
    assert h.source.committed[TP1] == 2


def test_a_lost_partition_commits_nothing_and_its_late_completions_change_nothing() -> None:
    h = harness(max_batch_events=1)
    h.publish(0, page_views(0, 3))
    h.turn()
    first, second, third = h.sender.submitted
    h.sender.accept(first)
    h.turn()
    assert h.source.committed == {TP0: 1}
    commits = len(h.source.commits)
    h.source.lose([TP0])  # another member may own it already
    assert len(h.source.commits) == commits
    h.sender.accept(second)
    h.sender.accept(third)
    h.turn(3)
    assert h.source.commits[commits:] == []
    assert h.source.committed == {TP0: 1}
    assert h.source.assignment == {TP1}
    assert h.metrics.value("rebalances_total", {"kind": "lost"}) == 1
    assert h.metrics.value("buffered_events") == 0
    # Only the first event's latency counts: the others finished for a fenced partition.
    assert h.metrics.value("end_to_end_latency_seconds_count") == 1


def test_a_lost_partitions_buffered_events_are_dropped_not_sent() -> None:
    h = harness(max_batch_events=1000, linger_ms=60_000, drain_timeout_s=30.0)
    h.publish(0, page_views(0, 2))
    h.publish(1, page_views(1, 1))
    h.turn()
    assert h.sender.submitted == []  # one batch, lingering
    h.source.lose([TP0])
    h.processor.request_stop()
    h.sender.on_wait = h.sender.complete
    assert h.processor.shutdown() == 0
    (batch,) = h.sender.submitted
    assert [item.ref.source for item in batch.items] == [(TOPIC, 1, 0)]
    assert h.source.committed == {TP1: 1}


def test_a_partition_assigned_again_restarts_from_its_commit_and_fences_the_old_work() -> None:
    h = harness(max_batch_events=1)
    h.publish(0, page_views(0, 3))
    h.turn()
    first, second, third = h.sender.submitted
    h.sender.accept(first)
    h.source.revoke([TP0])  # 1 and 2 still in flight: left to the next owner
    assert h.source.committed == {TP0: 1}
    h.source.assign([TP0])  # given back: a fresh ledger, reading from the commit
    h.turn()
    again = h.sender.submitted[3:]
    assert [offsets(b) for b in again] == [[1], [2]]  # at-least-once: delivered again
    assert [event_ids(b) for b in again] == [event_ids(second), event_ids(third)]  # deduplicated
    h.sender.accept(second)  # the old assignment's work, finishing late
    h.sender.accept(third)
    h.turn(2)
    assert h.source.committed == {TP0: 1}
    h.sender.complete()
    h.turn(2)
    assert h.source.committed == {TP0: 3}
    assert h.metrics.value("rebalances_total", {"kind": "assigned"}) == 3  # TP0, TP1, TP0


def test_records_the_client_delivers_again_after_a_rewind_are_skipped_not_fatal() -> None:
    # librdkafka can reset a partition's fetch position to its beginning after a pause
    # during its first offset lookup: the same offsets arrive a second time.
    h = harness(max_batch_events=1)
    *old, new = page_views(0, 4)
    h.publish(0, old)
    h.turn(2)
    assert len(h.sender.submitted) == 3
    h.source.rewind(TP0, 0)
    h.publish(0, [new])
    h.turn(2)
    assert [offsets(b) for b in h.sender.submitted] == [[0], [1], [2], [3]]  # only 3 is new
    h.sender.complete()
    h.turn(3)
    assert h.source.committed[TP0] == 4


# -- stop -----------------------------------------------------------------------------------


def test_stop_flushes_waits_and_commits() -> None:
    h = harness(max_batch_events=1000, linger_ms=60_000, drain_timeout_s=30.0)
    h.publish(0, page_views(0, 2))
    h.turn(2)
    assert h.sender.submitted == []  # lingering
    h.processor.request_stop()
    h.sender.on_wait = h.sender.complete  # TikTok answers while the stop waits
    assert h.processor.shutdown() == 0
    (batch,) = h.sender.submitted
    assert offsets(batch) == [0, 1]
    assert h.source.commits[-1] == Commit({TP0: 2}, asynchronous=False, accepted=True)
    assert h.source.committed == {TP0: 2}
    assert h.source.closed


def test_a_replay_stops_once_every_partition_is_read_and_done() -> None:
    h = harness(replay=True, report_end=True, dead_letters=False, max_batch_events=1)
    h.publish(0, page_views(0, 2))
    h.publish(1, [b"{not json", *page_views(1, 1, important=False)])
    assert h.processor.turn()  # read to the end, but two events are still with TikTok
    h.sender.complete()
    assert h.processor.turn() is False
    assert h.processor.stop_reason is None
    assert h.processor.shutdown() == 0
    assert h.source.committed == {TP0: 2, TP1: 2}
    assert h.processor.report.rejected == {"decode": 1}  # counted, not dead-lettered


# -- counters and readiness -----------------------------------------------------------------


def test_events_mapped_and_consumed_are_counted() -> None:
    h = harness()
    h.publish(0, page_views(0, 6))
    h.turn(2)
    assert h.metrics.value("records_consumed_total", {"topic": TOPIC}) == 6
    assert h.metrics.value("events_mapped_total", {"event": "ViewContent"}) == 6


def test_ready_reports_an_unreachable_cluster_and_a_member_without_partitions() -> None:
    h = harness()
    h.turn()
    assert h.processor.ready == (True, "ok")
    h.source.unreachable = "Kafka brokers unreachable: 1/1 brokers are down"
    assert h.processor.ready == (False, "Kafka brokers unreachable: 1/1 brokers are down")
    h.source.unreachable = None
    assert h.processor.ready == (True, "ok")
    h.source.revoke([TP0, TP1])
    assert h.processor.ready == (False, NO_PARTITIONS)


def test_a_fatal_kafka_error_stops_the_processor_with_exit_status_1() -> None:
    h = harness()
    h.turn()
    h.source.fatal = "Broker: Static consumer fenced by other consumer with same group.instance.id"
    assert h.processor.turn() is False
    assert h.processor.stop_reason == (
        "fatal Kafka error: Broker: Static consumer fenced by other consumer with same "
        "group.instance.id"
    )
    assert h.processor.turn() is False  # stays stopped
    assert h.processor.shutdown() == 1
