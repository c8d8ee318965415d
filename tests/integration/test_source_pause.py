"""The consumer's pause state always matches what the processor believes, across
rebalances, on a real broker.

librdkafka keeps a partition paused across a revoke and a later re-assignment. A member
paused by backpressure that loses partitions, resumes, and gets them back must fetch
them again; it once did not, and the partitions stalled until a restart while every
signal said healthy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer

from devkit.kafka import TopicFactory, produce
from processor.config import KafkaConfig
from processor.kafka.api import TopicPartition
from processor.kafka.consumer import KafkaSource
from processor.metrics import Metrics

PARTITIONS = 4


class Member:
    """A :class:`KafkaSource` and what its rebalance callbacks were told."""

    def __init__(self, bootstrap: str, group: str, topic: str, protocol: str) -> None:
        self.assigned: set[TopicPartition] = set()
        kafka = KafkaConfig(
            bootstrap_servers=bootstrap,
            group_id=group,
            group_protocol=protocol,
            settings={"topic.metadata.refresh.interval.ms": "1000"},
        )
        self.source = KafkaSource(kafka, [topic], Metrics())
        self.source.subscribe(self)
        self.seen: dict[int, int] = {}

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        self.assigned.update(partitions)

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        self.assigned.difference_update(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        self.assigned.difference_update(partitions)

    def on_commit_failed(self, partitions: list[TopicPartition], reason: str) -> None:
        pass

    def turn(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for record in self.source.consume(100, 0.1):
                self.seen[record.partition] = self.seen.get(record.partition, 0) + 1

    def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.turn(0.2)
            if condition():
                return
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (seen {self.seen})")


def other_member(bootstrap: str, group: str, topic: str, protocol: str) -> Consumer:
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": protocol,
        "enable.auto.commit": False,
    }
    if protocol == "classic":
        settings |= {"partition.assignment.strategy": "cooperative-sticky"}
    consumer = Consumer(settings)
    consumer.subscribe([topic])
    return consumer


@pytest.fixture(params=["classic", "consumer"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_partitions_lost_while_paused_and_given_back_after_resume_are_fetched_again(
    kafka_bootstrap: str, new_topic: TopicFactory, group_id: str, protocol: str
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    member = Member(kafka_bootstrap, group_id, topic, protocol)
    member.until(lambda: len(member.assigned) == PARTITIONS, 60, "all partitions assigned")

    # Backpressure: the member pauses everything.
    member.source.pause_all()
    # A second member joins: some partitions move to it (revoked here while paused).
    other = other_member(kafka_bootstrap, group_id, topic, protocol)
    deadline = time.monotonic() + 60
    while len(member.assigned) == PARTITIONS and time.monotonic() < deadline:
        other.poll(0.1)
        member.turn(0.1)
    moved = PARTITIONS - len(member.assigned)
    assert moved > 0, "the second member never got partitions"

    # Backpressure is over: the member resumes what it has.
    member.source.resume_all()
    # The second member leaves: its partitions come back to the first one.
    other.close()
    member.until(lambda: len(member.assigned) == PARTITIONS, 60, "partitions given back")

    for p in range(PARTITIONS):
        produce(kafka_bootstrap, topic, [(b"k", b"v")] * 5, partition=p)
    member.until(
        lambda: all(member.seen.get(p, 0) >= 5 for p in range(PARTITIONS)),
        30,
        "records from every partition",
    )
    member.source.close()


def test_partitions_assigned_while_paused_stay_paused_until_resume(
    kafka_bootstrap: str, new_topic: TopicFactory, group_id: str
) -> None:
    topic = new_topic(partitions=2)
    member = Member(kafka_bootstrap, group_id, topic, "classic")
    member.source.pause_all()  # before any assignment
    member.until(lambda: len(member.assigned) == 2, 60, "partitions assigned")
    for p in range(2):
        produce(kafka_bootstrap, topic, [(b"k", b"v")], partition=p)
    member.turn(3)
    assert member.seen == {}, "a paused member fetched"
    member.source.resume_all()
    member.until(lambda: sum(member.seen.values()) == 2, 30, "records after resume")
    member.source.close()
