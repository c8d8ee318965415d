"""What the rest of the processor sees of Kafka: records, partitions, and the
consumer as a typed Protocol.

The loop (:mod:`processor.loop`) is written against :class:`Consumer` only. Two
implementations ship: :class:`processor.kafka.consumer.KafkaSource`, a consumer
group member on a real cluster, and :class:`processor.kafka.memory.MemorySource`,
an in-memory one for tests and trials (as httpx ships ``MockTransport``).

This module imports nothing of ``confluent_kafka``: librdkafka's messages and
errors are translated at the boundary, in :mod:`processor.kafka.consumer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

#: A record's headers as the broker gave them: (name, value) pairs, a value may be None.
Headers = Sequence[tuple[str, bytes | None]]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record:
    """One consumed Kafka record. ``timestamp`` is in seconds (None when the record
    carries none); ``headers`` is None when it has none."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(  # noqa: PLR0917 - built once per record: positional is the cheapest call
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
        timestamp: float | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.value = value
        self.key = key
        self.headers = headers
        self.timestamp = timestamp

    def header_list(self) -> list[tuple[str, bytes | None]]:
        return list(self.headers or ())

    def __repr__(self) -> str:
        return f"Record({self.topic}[{self.partition}]@{self.offset})"


class PartitionLag(NamedTuple):
    """Records behind on one partition, and the offset they are counted from."""

    lag: int
    position: int


class RebalanceListener(Protocol):
    """Who the consumer tells about its partitions. Every call runs on the poll thread,
    inside :meth:`Consumer.consume` (or :meth:`Consumer.close`)."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None: ...

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """The partitions go to another member: finish and commit what can be, now."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """The partitions may already be another member's: commit nothing for them."""

    def on_commit_failed(self, partitions: list[TopicPartition], reason: str) -> None:
        """An asynchronous commit was refused by the broker."""


class Consumer(Protocol):
    """One member of the consumer group, as the loop uses it.

    Offsets are never committed automatically: the loop commits what the ledger says
    is done. Not thread-safe: owned by the poll thread.
    """

    @property
    def paused(self) -> bool: ...

    @property
    def assignment(self) -> set[TopicPartition]: ...

    @property
    def unreachable(self) -> str | None:
        """Why the brokers cannot be reached, while they cannot."""

    @property
    def fatal(self) -> str | None:
        """A fatal client error: the member cannot go on."""

    def subscribe(self, listener: RebalanceListener) -> None: ...

    def consume(self, max_records: int, timeout: float) -> list[Record]: ...

    def reached_end(self) -> bool:
        """Every assigned partition is read to its end (only when built to report ends)."""

    def pause_all(self) -> None:
        """Stop fetching on every assigned partition (and on those assigned later, until
        :meth:`resume_all`); consume() keeps the membership alive."""

    def resume_all(self) -> None: ...

    def commit(self, positions: Mapping[TopicPartition, int], *, asynchronous: bool) -> bool:
        """Commit ``positions`` (the next offset to read per partition). Asynchronous:
        True once sent (a refusal reaches :meth:`RebalanceListener.on_commit_failed`)."""

    def commit_and_serve(self, positions: Mapping[TopicPartition, int], timeout: float) -> bool:
        """Commit and keep the membership served until the broker answers (the stop)."""

    def lag(self) -> dict[TopicPartition, PartitionLag]: ...

    def close(self) -> None:
        """Leave the group (revokes what is still assigned)."""
