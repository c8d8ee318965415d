"""The in-memory Kafka behaves as the real client does where the loop can tell (the
loop's own tests in test_loop.py rely on each of these)."""

from __future__ import annotations

from processor.errors import DeadLetterWriteError
from processor.kafka.api import TopicPartition
from processor.kafka.memory import Commit, MemoryProducer, MemorySource

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[TopicPartition]]] = []
        self.refused: list[tuple[list[TopicPartition], str]] = []

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assigned", partitions))

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("revoked", partitions))

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("lost", partitions))

    def on_commit_failed(self, partitions: list[TopicPartition], reason: str) -> None:
        self.refused.append((partitions, reason))


def test_records_come_in_offset_order_and_a_paused_member_gets_none() -> None:
    source = MemorySource([TP0, TP1])
    source.subscribe(Listener())
    for i in range(3):
        source.append("t", 0, b"%d" % i)
    source.append("t", 1, b"x", key=b"k", headers=[("h", b"v")], timestamp=12.5)
    source.pause_all()
    assert source.consume(10, 0) == []
    source.resume_all()
    records = source.consume(2, 0) + source.consume(10, 0)
    assert [(r.partition, r.offset) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert (records[3].key, records[3].header_list(), records[3].timestamp) == (
        b"k",
        [("h", b"v")],
        12.5,
    )
    assert source.consume(10, 0) == []


def test_a_partition_assigned_again_starts_from_its_committed_offset() -> None:
    listener = Listener()
    source = MemorySource([TP0])
    source.subscribe(listener)
    for i in range(5):
        source.append("t", 0, b"%d" % i)
    assert len(source.consume(10, 0)) == 5
    assert source.commit({TP0: 2}, asynchronous=True)
    source.revoke([TP0])
    assert source.consume(10, 0) == []
    source.assign([TP0])
    assert [r.offset for r in source.consume(10, 0)] == [2, 3, 4]
    assert listener.calls == [("assigned", [TP0]), ("revoked", [TP0]), ("assigned", [TP0])]
    assert source.lag() == {TP0: (0, 5)}


def test_a_refused_asynchronous_commit_is_reported_inside_the_next_consume() -> None:
    listener = Listener()
    source = MemorySource([TP0])
    source.subscribe(listener)
    source.refuse_commits("REBALANCE_IN_PROGRESS")
    assert source.commit({TP0: 1}, asynchronous=True)  # sent: the answer comes later
    assert not source.commit({TP0: 1}, asynchronous=False)
    assert listener.refused == []
    source.consume(1, 0)
    assert listener.refused == [([TP0], "REBALANCE_IN_PROGRESS")]
    assert source.committed == {}
    source.refuse_commits(None)
    assert source.commit_and_serve({TP0: 1}, timeout=1)
    assert source.commits[-1] == Commit({TP0: 1}, asynchronous=False, accepted=True)
    assert source.committed == {TP0: 1}


def test_the_end_is_reported_once_every_assigned_partition_is_read() -> None:
    source = MemorySource([TP0, TP1], report_end=True)
    source.subscribe(Listener())
    source.append("t", 0, b"a")
    assert not source.reached_end()
    source.consume(10, 0)
    assert source.reached_end()
    source.lose([TP1])
    assert source.assignment == {TP0}
    source.close()
    assert source.closed
    assert source.assignment == set()


def test_the_producer_acknowledges_holds_or_refuses_as_a_broker_would() -> None:
    answers: list[DeadLetterWriteError | None] = []
    held = MemoryProducer(acknowledge=False)
    held.produce("dlq", key=None, value=b"v", headers=[], on_delivery=answers.append)
    assert held.poll() == 0
    assert answers == []
    assert held.deliver() == 1
    assert answers == [None]
    small = MemoryProducer(max_bytes=3)
    small.produce("dlq", key=b"k", value=b"vvv", headers=[], on_delivery=answers.append)
    small.poll()
    refusal = answers[-1]
    assert refusal is not None
    assert refusal.too_large
