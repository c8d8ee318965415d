"""The run loop against a scripted consumer and sender: commits, dead letters,
backpressure, halts, revokes and stops, deterministically and without a broker.

(The same behaviours are proven against a real Kafka broker and the sandbox in
tests/integration/test_pipeline.py; these pin down the loop's own logic.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest

from processor.app import Processor
from processor.batching import Batch, PendingEvent
from processor.config import Config, DeadLetterConfig, load_config
from processor.dlq import DeadLetterWriter, header_map
from processor.metrics import Metrics
from processor.offsets import TopicPartition
from processor.sample import ClickstreamGenerator
from processor.source import PartitionLag
from processor.transform import build_transformer
from tests.conftest import EXAMPLE_CONFIG
from tests.unit.test_dlq import FakeProducer

NOW = 1_767_225_600.0
TP0 = TopicPartition("web.pageviews", 0)
TP1 = TopicPartition("web.pageviews", 1)


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return b"key"

    def value(self) -> bytes | None:
        return self._v

    def headers(self) -> list[tuple[str, bytes]]:
        return [("h", b"v")]

    def timestamp(self) -> tuple[int, int]:
        return (1, int(NOW * 1000))


class FakeSource:
    """Plays the consumer: a scripted assignment and message feed, recorded commits."""

    def __init__(self, kafka: Any, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks
        self.feed: list[FakeMessage] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.sync_commits: list[dict[TopicPartition, int]] = []
        self.assignment: set[TopicPartition] = set()
        self.paused = False
        self.pause_calls = 0

    def subscribe(self) -> None:
        self.assign([TP0, TP1])

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assignment.update(tps)
        self.callbacks["on_assign"](tps)

    def revoke(self, tps: list[TopicPartition]) -> None:
        self.callbacks["on_revoke"](tps)
        self.assignment.difference_update(tps)

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        if self.paused:
            return []
        out, self.feed = self.feed[:n], self.feed[n:]
        return out

    def pause_all(self) -> None:
        self.paused = True
        self.pause_calls += 1

    def resume_all(self) -> None:
        self.paused = False

    def commit(self, positions: dict[TopicPartition, int], *, asynchronous: bool) -> bool:
        (self.commits if asynchronous else self.sync_commits).append(dict(positions))
        return True

    def commit_and_serve(self, positions: dict[TopicPartition, int], timeout: float) -> bool:
        self.sync_commits.append(dict(positions))
        return True

    def serve(self, timeout: float) -> None:
        pass

    def lag(self) -> dict[TopicPartition, PartitionLag]:
        return {}

    def close(self) -> None:
        self.revoke(sorted(self.assignment))


@dataclass
class Outcome:
    batch: Batch
    accepted: list[PendingEvent]
    rejected: list[tuple[PendingEvent, str]] = field(default_factory=list)


class FakeSender:
    """Holds submitted batches until the test completes them, in any order."""

    def __init__(self) -> None:
        self.submitted: list[Batch] = []
        self.completed: list[Outcome] = []
        self.halted: str | None = None

    def start(self) -> None:
        pass

    def submit(self, batch: Batch) -> None:
        self.submitted.append(batch)

    def accept(
        self, batch: Batch, reject: Callable[[PendingEvent], str | None] = lambda e: None
    ) -> None:
        rejected = [(i, r) for i in batch.items if (r := reject(i)) is not None]
        accepted = [i for i in batch.items if reject(i) is None]
        self.completed.append(Outcome(batch, accepted, rejected))

    def poll_completions(self) -> Sequence[Outcome]:
        out, self.completed = self.completed, []
        return out

    def wait(self, timeout: float) -> bool:
        return bool(self.completed)

    def close(self, timeout: float) -> None:
        pass


def page_views(partition: int, offsets: Sequence[int], important: bool = True) -> list[FakeMessage]:
    gen = ClickstreamGenerator(seed=partition, start=NOW - 60)
    out = []
    for offset in offsets:
        while True:
            record = next(gen.records(1))
            if record.kind == "page_view" and (record.expected_event is not None) == important:
                break
        out.append(FakeMessage("web.pageviews", partition, offset, record.value))
    return out


@dataclass
class Harness:
    processor: Processor
    source: FakeSource
    sender: FakeSender
    metrics: Metrics
    producer: FakeProducer | None

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            assert self.processor.turn()

    @property
    def last_commit(self) -> dict[TopicPartition, int]:
        merged: dict[TopicPartition, int] = {}
        for commit in self.source.commits + self.source.sync_commits:
            merged.update(commit)
        return merged


def harness(dead_letters: bool = True, **delivery: Any) -> Harness:
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
    producer = FakeProducer() if dead_letters else None
    writer = DeadLetterWriter(producer, "clickstream.dlq", lambda: NOW) if producer else None
    clock = iter(float(NOW + i) for i in range(1_000_000))
    processor = Processor(
        config, transformer, metrics, sender,
        source_factory=FakeSource, dead_letters=writer, clock=lambda: next(clock),
    )  # fmt: skip
    processor.start()
    source = processor._source
    assert isinstance(source, FakeSource)
    return Harness(processor, source, sender, metrics, producer)


def test_out_of_order_completions_commit_only_the_watermark() -> None:
    h = harness(max_batch_events=1)
    h.source.feed = page_views(0, [0, 1, 2, 3])
    h.turn(2)
    assert len(h.sender.submitted) == 4
    first, second, third, fourth = h.sender.submitted
    h.sender.accept(third)
    h.sender.accept(second)
    h.turn(2)
    assert h.last_commit.get(TP0, 0) == 0  # offset 0 still in flight
    h.sender.accept(first)
    h.turn(2)
    assert h.last_commit[TP0] == 3  # 0-2 done, 3 in flight
    h.sender.accept(fourth)
    h.turn(2)
    assert h.last_commit[TP0] == 4


def test_filtered_records_commit_immediately() -> None:
    h = harness()
    h.source.feed = page_views(1, [0, 1, 2], important=False)
    h.turn(2)
    assert h.sender.submitted == []
    assert h.last_commit[TP1] == 3
    assert h.metrics.value("records_filtered_total", {"topic": "web.pageviews"}) == 3


def test_rejected_record_is_done_only_once_its_dead_letter_is_acknowledged() -> None:
    h = harness()
    bad = FakeMessage("web.pageviews", 0, 0, b"{not json")
    h.source.feed = [bad]
    h.source.feed += page_views(0, [1], important=False)
    assert h.producer is not None
    h.producer.poll = lambda timeout=0: 0  # type: ignore[method-assign]  # broker slow to ack
    h.turn(3)
    assert h.last_commit.get(TP0, 0) == 0
    (letter,) = h.producer.produced
    assert letter["value"] == b"{not json"
    assert header_map(letter["headers"])["dlq.stage"] == "decode"
    letter["on_delivery"](None)  # the broker acknowledges
    h.turn(2)
    assert h.last_commit[TP0] == 2
    assert (
        h.metrics.value(
            "records_dead_lettered_total", {"topic": "web.pageviews", "stage": "decode"}
        )
        == 1
    )


def test_api_rejections_are_dead_lettered_with_tiktoks_message() -> None:
    h = harness(max_batch_events=2)
    h.source.feed = page_views(0, [0, 1])
    h.turn(2)
    (batch,) = h.sender.submitted
    h.sender.accept(
        batch,
        reject=lambda item: (
            "40002 Invalid value for data[0].event_id" if item.ref.offset == 1 else None
        ),
    )
    h.turn(3)
    assert h.producer is not None
    (letter,) = h.producer.produced
    headers = header_map(letter["headers"])
    assert (headers["dlq.stage"], headers["dlq.source.offset"]) == ("api", "1")
    assert headers["dlq.reason"] == "40002 Invalid value for data[0].event_id"
    assert headers["dlq.mapping"] == "important-page-views"
    assert h.last_commit[TP0] == 2


def test_backpressure_pauses_above_the_limit_and_resumes_below_half() -> None:
    h = harness(max_batch_events=1, max_buffered_events=4)
    h.source.feed = page_views(0, range(10))
    h.turn(3)
    assert h.source.paused
    assert len(h.sender.submitted) <= 10
    outstanding = list(h.sender.submitted)
    assert h.metrics.value("paused") == 1
    for batch in outstanding[:1]:
        h.sender.accept(batch)
    h.turn()
    assert h.source.paused  # 3 still out: above half of 4
    for batch in outstanding[1:]:
        h.sender.accept(batch)
    h.turn(2)
    assert not h.source.paused


def test_halted_sender_pauses_and_commits_nothing_past_held_events() -> None:
    h = harness(max_batch_events=1)
    h.source.feed = page_views(0, [0, 1])
    h.turn(2)
    h.sender.halted = "40105 access token is invalid"
    h.turn(2)
    assert h.source.paused
    assert h.processor.ready == (False, "halted: 40105 access token is invalid")
    assert h.last_commit.get(TP0, 0) == 0
    h.sender.halted = None
    for batch in h.sender.submitted:
        h.sender.accept(batch)
    h.turn(2)
    assert not h.source.paused
    assert h.last_commit[TP0] == 2


def test_revoke_waits_commits_the_watermark_and_fences_late_completions() -> None:
    h = harness(max_batch_events=1)
    h.source.feed = page_views(0, [0, 1, 2])
    h.turn(2)
    first, second, third = h.sender.submitted
    h.sender.accept(first)
    h.source.revoke([TP0])  # drain times out: 1 and 2 are still in flight
    assert h.source.sync_commits[-1] == {TP0: 1}
    h.source.assign([TP0])  # given back: a new tracker, a fresh start at the commit
    h.sender.accept(second)
    h.sender.accept(third)
    h.turn(2)
    assert all(c.get(TP0, 1) <= 1 for c in h.source.commits)


def test_stop_flushes_waits_and_commits() -> None:
    h = harness(max_batch_events=1000, linger_ms=60_000)
    h.source.feed = page_views(0, [0, 1])
    h.turn(2)
    assert h.sender.submitted == []  # lingering
    h.processor.request_stop()
    original_collect = h.processor._collect

    def collect_and_accept() -> None:
        for batch in h.sender.submitted:
            h.sender.accept(batch)
        h.sender.submitted = []
        original_collect()

    h.processor._collect = collect_and_accept  # type: ignore[method-assign]
    assert h.processor.shutdown() == 0
    assert h.last_commit[TP0] == 2


def test_dead_letter_limit_stops_the_processor() -> None:
    h = harness()
    h.source.feed = [FakeMessage("web.pageviews", 0, i, b"junk") for i in range(10)]
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
    h.source.feed = [FakeMessage("web.pageviews", 0, 0, orjson.dumps([1]))]
    assert h.processor.turn() is False
    assert "no kafka.dead_letter_topic is configured" in (h.processor.stop_reason or "")
    assert h.last_commit.get(TP0, 0) == 0


@pytest.mark.parametrize("offsets", [[0, 1, 2, 3, 4, 5]])
def test_events_mapped_and_consumed_are_counted(offsets: list[int]) -> None:
    h = harness()
    h.source.feed = page_views(0, offsets)
    h.turn(2)
    assert h.metrics.value("records_consumed_total", {"topic": "web.pageviews"}) == len(offsets)
    assert h.metrics.value("events_mapped_total", {"event": "ViewContent"}) == len(offsets)


def test_a_revoke_while_halted_does_not_wait_for_the_drain_timeout() -> None:
    h = harness(max_batch_events=1, drain_timeout_s=30.0)
    h.source.feed = page_views(0, [0, 1])
    h.turn(2)
    h.sender.halted = "40105 access token is invalid"
    h.turn()
    before = h.processor._clock()  # the fake clock advances a second per read
    h.source.revoke([TP0])  # waiting for the drain timeout would take 30 fake seconds
    assert h.processor._clock() - before < 5
    assert h.source.sync_commits[-1] == {TP0: 0}


def test_a_dead_letter_is_committed_past_soon_after_its_acknowledgement() -> None:
    # Offsets otherwise wait a minute; a crash in that minute would write it again.
    h = harness(commit_interval_ms=60_000)
    h.turn()  # the first commit pass
    h.source.feed = [FakeMessage("web.pageviews", 0, 0, b"{not json")]
    h.turn(3)  # consumed, dead-lettered, acknowledged (the fake broker acks on poll)
    assert h.last_commit.get(TP0) == 1
    h.source.feed = page_views(0, [1], important=False)
    h.turn(3)
    assert h.last_commit[TP0] == 1  # a filtered record waits for the interval as before


def test_tiktok_rejecting_every_event_trips_the_dead_letter_limit() -> None:
    # max_consecutive is 5 in the harness: every record maps, and TikTok refuses each event.
    h = harness(max_batch_events=1)
    h.source.feed = page_views(0, list(range(8)))
    h.turn(2)
    assert h.producer is not None
    h.producer.poll = lambda timeout=0: 0  # type: ignore[method-assign]  # letters not acked yet
    stopped = False
    for _ in range(10):
        for batch in h.sender.submitted:
            h.sender.accept(batch, reject=lambda item: "40002 Invalid value for data[0].event_id")
        h.sender.submitted = []
        if not h.processor.turn():
            stopped = True
            break
    assert stopped
    assert h.processor.stop_reason is not None
    assert "dead-letter limit reached: 5 records in a row" in h.processor.stop_reason
    assert "api: 40002" in h.processor.stop_reason
    # Nothing was committed past a record whose dead letter the broker has not acknowledged.
    assert h.last_commit.get(TP0, 0) == 0


def test_records_the_client_delivers_again_after_a_rewind_are_skipped_not_fatal() -> None:
    # librdkafka can reset a partition's fetch position to its beginning after a pause
    # during its first offset lookup: the same offsets arrive a second time.
    h = harness(max_batch_events=1)
    h.source.feed = page_views(0, [0, 1, 2])
    h.turn(2)
    assert len(h.sender.submitted) == 3
    h.source.feed = page_views(0, [0, 1, 2, 3])  # rewound, then one new record
    h.turn(2)
    assert len(h.sender.submitted) == 4  # only offset 3 is new
    for batch in h.sender.submitted:
        h.sender.accept(batch)
    h.turn(3)
    assert h.last_commit[TP0] == 4
