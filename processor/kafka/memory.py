"""In-memory Kafka for tests and trials: :class:`MemorySource`, a
:class:`processor.kafka.api.Consumer`, and :class:`MemoryProducer`, a dead-letter
producer (:class:`processor.dlq.Producer`).

They behave as the real clients do where the loop can tell: records come in
offset order per partition; a partition assigned again starts from its committed
offset; an asynchronous commit's refusal and the rebalance callbacks are delivered
inside :meth:`MemorySource.consume`; a paused member fetches nothing. What a test
drives by hand: :meth:`MemorySource.append` (records on the "broker"),
:meth:`~MemorySource.assign`, :meth:`~MemorySource.revoke`, :meth:`~MemorySource.lose`,
:meth:`~MemorySource.refuse_commits`, and the ``unreachable`` / ``fatal`` states.
Nothing here imports a Kafka client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from processor.errors import DeadLetterWriteError
from processor.kafka.api import (
    Consumer,
    Headers,
    PartitionLag,
    RebalanceListener,
    Record,
    TopicPartition,
)

if TYPE_CHECKING:
    from processor.dlq import Producer as DeadLetterProducer


@dataclass
class Commit:
    """One commit the member made."""

    positions: dict[TopicPartition, int]
    asynchronous: bool
    accepted: bool


@dataclass
class _Partition:
    records: list[Record] = field(default_factory=list)
    position: int = 0  # the next offset this member reads, while assigned


class MemorySource:
    """A consumer group member alone in its group, over in-memory partitions.

    ``partitions``: the partitions that exist (more appear with :meth:`append`);
    :meth:`subscribe` assigns all of them, or ``initial`` when given.
    ``report_end``: :meth:`reached_end` tells when every assigned partition is read.
    """

    def __init__(
        self,
        partitions: Iterable[TopicPartition] = (),
        *,
        initial: Iterable[TopicPartition] | None = None,
        report_end: bool = False,
    ) -> None:
        self._partitions: dict[TopicPartition, _Partition] = {tp: _Partition() for tp in partitions}
        self._initial = list(initial) if initial is not None else None
        self._report_end = report_end
        self._listener: RebalanceListener | None = None
        self._assigned: list[TopicPartition] = []
        self._paused = False
        self._refusal: str | None = None
        self._refused: list[tuple[list[TopicPartition], str]] = []
        #: What the group has committed: the broker's view.
        self.committed: dict[TopicPartition, int] = {}
        #: Every commit, in order.
        self.commits: list[Commit] = []
        self.pause_calls = 0
        self.closed = False
        self.unreachable: str | None = None
        self.fatal: str | None = None

    # -- the "broker" ------------------------------------------------------------------

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
        timestamp: float | None = None,
    ) -> Record:
        """A record at the end of ``topic[partition]`` (the partition is created if new)."""
        tp = TopicPartition(topic, partition)
        log = self._partitions.setdefault(tp, _Partition()).records
        record = Record(topic, partition, len(log), value, key, headers, timestamp)
        log.append(record)
        return record

    def end(self, tp: TopicPartition) -> int:
        """The partition's log end offset."""
        return len(self._partitions[tp].records)

    def rewind(self, tp: TopicPartition, offset: int) -> None:
        """Move the member's fetch position back (as librdkafka may after an offset reset)."""
        self._partitions[tp].position = offset

    # -- the group ---------------------------------------------------------------------

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """The group gives this member ``partitions``; reading starts at the committed offset."""
        new = [tp for tp in partitions if tp not in self._assigned]
        for tp in new:
            self._partitions.setdefault(tp, _Partition()).position = self.committed.get(tp, 0)
            self._assigned.append(tp)
        self._listener_or_fail().on_assigned(new)

    def revoke(self, partitions: Sequence[TopicPartition]) -> None:
        """The group takes ``partitions`` back in an orderly rebalance."""
        gone = [tp for tp in partitions if tp in self._assigned]
        self._listener_or_fail().on_revoked(gone)
        self._assigned = [tp for tp in self._assigned if tp not in gone]

    def lose(self, partitions: Sequence[TopicPartition]) -> None:
        """The member lost ``partitions`` (its session expired): another may own them."""
        gone = [tp for tp in partitions if tp in self._assigned]
        self._listener_or_fail().on_lost(gone)
        self._assigned = [tp for tp in self._assigned if tp not in gone]

    def refuse_commits(self, reason: str | None) -> None:
        """From now on the broker refuses every commit with ``reason`` (None: accepts again)."""
        self._refusal = reason

    def _listener_or_fail(self) -> RebalanceListener:
        if self._listener is None:
            raise RuntimeError("subscribe() first")
        return self._listener

    # -- Consumer ----------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener
        initial = self._initial if self._initial is not None else list(self._partitions)
        self.assign(sorted(initial))

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        self._serve_callbacks()
        if self._paused or self.closed:
            return []
        out: list[Record] = []
        for tp in list(self._assigned):
            part = self._partitions[tp]
            take = part.records[part.position : part.position + max_records - len(out)]
            part.position += len(take)
            out.extend(take)
            if len(out) >= max_records:
                break
        return out

    def reached_end(self) -> bool:
        if not self._report_end or not self._assigned:
            return False
        return all(self._partitions[tp].position >= self.end(tp) for tp in self._assigned)

    def pause_all(self) -> None:
        self._paused = True
        self.pause_calls += 1

    def resume_all(self) -> None:
        self._paused = False

    def commit(self, positions: Mapping[TopicPartition, int], *, asynchronous: bool) -> bool:
        if not positions:
            return True
        accepted = self._refusal is None
        self.commits.append(Commit(dict(positions), asynchronous, accepted))
        if accepted:
            self.committed.update(positions)
        elif asynchronous:
            self._refused.append((list(positions), self._refusal or ""))
        return accepted or asynchronous

    def commit_and_serve(self, positions: Mapping[TopicPartition, int], timeout: float) -> bool:
        return self.commit(positions, asynchronous=False)

    def _serve_callbacks(self) -> None:
        refused, self._refused = self._refused, []
        for partitions, reason in refused:
            if self._listener is not None:
                self._listener.on_commit_failed(partitions, reason)

    def lag(self) -> dict[TopicPartition, PartitionLag]:
        out = {}
        for tp in self._assigned:
            part = self._partitions[tp]
            out[tp] = PartitionLag(max(0, len(part.records) - part.position), part.position)
        return out

    def close(self) -> None:
        if self.closed:
            return
        if self._assigned and self._listener is not None:
            self.revoke(list(self._assigned))
        self.closed = True

    # -- for assertions ------------------------------------------------------------------

    def last_committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp``, if any."""
        return self.committed.get(tp)


Delivered = Callable[[DeadLetterWriteError | None], None]


@dataclass
class Produced:
    """One message given to :class:`MemoryProducer`."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    on_delivery: Delivered

    def size(self) -> int:
        """Bytes of key, value and headers (names and values)."""
        headers = sum(len(name) + len(value) for name, value in self.headers)
        return len(self.key or b"") + len(self.value or b"") + headers


class MemoryProducer:
    """A dead-letter producer that keeps what it is given.

    ``acknowledge``: acknowledge every message at the next :meth:`poll` (as a healthy
    broker does); False holds them until :meth:`deliver`. ``queue_full``: the first
    ``queue_full`` produce calls raise ``BufferError``. ``unqueueable``: every produce
    call raises it (a letter the client cannot queue). ``refuse``: every message is
    refused with that error instead of being acknowledged. ``max_bytes``: a message
    whose key, value and headers add up to more is refused as too large, as a topic
    with that ``max.message.bytes`` does.
    """

    def __init__(
        self,
        *,
        acknowledge: bool = True,
        queue_full: int = 0,
        unqueueable: DeadLetterWriteError | None = None,
        refuse: DeadLetterWriteError | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.acknowledge = acknowledge
        self.queue_full = queue_full
        self.unqueueable = unqueueable
        self.refuse = refuse
        self.max_bytes = max_bytes
        self.produced: list[Produced] = []
        self._pending: list[Produced] = []

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Delivered,
    ) -> None:
        if self.queue_full:
            self.queue_full -= 1
            raise BufferError("queue full")
        if self.unqueueable is not None:
            raise self.unqueueable
        message = Produced(topic, key, value, list(headers), on_delivery)
        self.produced.append(message)
        self._pending.append(message)

    def poll(self, timeout: float = 0) -> int:
        if not self.acknowledge and self.refuse is None:
            return 0
        return self.deliver()

    def deliver(self) -> int:
        """Acknowledge (or refuse) everything produced so far; how many."""
        pending, self._pending = self._pending, []
        for message in pending:
            message.on_delivery(self._verdict(message))
        return len(pending)

    def _verdict(self, message: Produced) -> DeadLetterWriteError | None:
        if self.refuse is not None:
            return self.refuse
        if self.max_bytes is not None and message.size() > self.max_bytes:
            return DeadLetterWriteError(
                f"MSG_SIZE_TOO_LARGE: {message.size()} bytes above {self.max_bytes}",
                too_large=True,
            )
        return None

    def flush(self, timeout: float) -> int:
        """Serve acknowledgements until none is pending (letters written again from a
        refusal's callback included); how many are left (held ones, when not
        acknowledging)."""
        while self._pending and self.poll(timeout):
            pass
        return len(self._pending)


if TYPE_CHECKING:  # both are what the loop takes

    def _is_a_consumer(source: MemorySource) -> Consumer:
        return source

    def _is_a_dead_letter_producer(producer: MemoryProducer) -> DeadLetterProducer:
        return producer
