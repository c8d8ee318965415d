"""Per-partition completion tracking: which offset is safe to commit.

Records finish out of order (a batch for one pixel returns before another, a
dead letter is acknowledged before a retry succeeds), but Kafka commits one
number per partition meaning "everything below is done". So each partition
keeps its records in offset order with a count of outstanding work (events to
be accepted, dead letters to be acknowledged); the commit position is the
*lowest offset not yet done*, or one past the last record when all are done:
the contiguous watermark, as in Confluent's Parallel Consumer and Redpanda
Connect's checkpointer. It never passes a record that is buffered, in flight,
retrying, or failed without being dead-lettered.

Fencing: a partition gets a new :class:`PartitionTracker` on every assignment.
On revoke or loss the old one is deactivated; a completion that arrives later
for it changes nothing, so it can never commit over the partition's new owner.

Not thread-safe: owned by the poll thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import NamedTuple


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class _Entry:
    __slots__ = ("offset", "remaining", "timestamp")

    def __init__(self, offset: int, remaining: int, timestamp: float) -> None:
        self.offset = offset
        self.remaining = remaining
        self.timestamp = timestamp


class PartitionTracker:
    """The records of one partition, for one assignment of it."""

    __slots__ = ("_entries", "_index", "_next", "active", "committed", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.active = True
        #: The last position committed (or accepted as committed) for this assignment.
        self.committed: int | None = None
        self._entries: deque[_Entry] = deque()
        self._index: dict[int, _Entry] = {}
        self._next: int | None = None  # one past the highest offset tracked

    def seen(self, offset: int) -> bool:
        """Whether ``offset`` was tracked already in this assignment: a record the
        client delivers again after rewinding its fetch position (librdkafka can reset a
        partition to its beginning after a pause during its first offset lookup). It is
        done or on its way already; handling it again would only send it twice."""
        return self._next is not None and offset < self._next

    def track(self, offset: int, work: int, timestamp: float) -> None:
        """A consumed record with ``work`` outstanding units (0: done already, e.g. filtered)."""
        if self._next is not None and offset < self._next:
            raise ValueError(f"{self.tp}: offset {offset} tracked after {self._next - 1}")
        self._next = offset + 1
        # A record with nothing outstanding needs no entry: the position is the
        # first entry still outstanding, or one past the last record.
        if work > 0:
            entry = _Entry(offset, work, timestamp)
            self._entries.append(entry)
            self._index[offset] = entry

    def finish(self, offset: int, units: int = 1) -> None:
        """``units`` of ``offset``'s work are done. Ignored once deactivated (fencing)."""
        if not self.active:
            return
        entry = self._index.get(offset)
        if entry is None:
            raise ValueError(f"{self.tp}: offset {offset} is not outstanding")
        entry.remaining -= units
        if entry.remaining < 0:
            raise ValueError(f"{self.tp}: offset {offset} finished more often than tracked")
        if entry.remaining == 0:
            del self._index[offset]
            self._pop_done()

    def _pop_done(self) -> None:
        entries = self._entries
        while entries and entries[0].remaining == 0:
            entries.popleft()

    def position(self) -> int | None:
        """The offset to commit: the lowest not done, or one past the last tracked record."""
        if self._entries:
            return self._entries[0].offset
        return self._next

    def pending(self) -> int:
        """Records not yet done."""
        return len(self._index)

    def oldest_pending_timestamp(self) -> float | None:
        """Timestamp of the record holding the position back."""
        return self._entries[0].timestamp if self._entries else None

    def to_commit(self) -> int | None:
        """The position when it moved past what was committed, else None."""
        position = self.position()
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position


class OffsetTracker:
    """The trackers of every partition this member owns."""

    def __init__(self) -> None:
        # Keyed by TopicPartition; plain (topic, partition) tuples find the same entry.
        self._partitions: dict[tuple[str, int], PartitionTracker] = {}

    def assign(self, tp: TopicPartition) -> PartitionTracker:
        """A fresh tracker for a newly assigned partition (any old one is fenced off)."""
        self.revoke(tp)
        tracker = self._partitions[tp] = PartitionTracker(tp)
        return tracker

    def revoke(self, tp: TopicPartition) -> PartitionTracker | None:
        """Stop tracking ``tp``; its tracker ignores every later completion."""
        tracker = self._partitions.pop(tp, None)
        if tracker is not None:
            tracker.active = False
        return tracker

    def get(self, tp: tuple[str, int]) -> PartitionTracker | None:
        return self._partitions.get(tp)

    def __iter__(self) -> Iterator[PartitionTracker]:
        return iter(list(self._partitions.values()))

    def __len__(self) -> int:
        return len(self._partitions)

    def pending(self) -> int:
        return sum(t.pending() for t in self._partitions.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Positions that moved since the last commit."""
        out = {}
        for tracker in self._partitions.values():
            position = tracker.to_commit()
            if position is not None:
                out[tracker.tp] = position
        return out

    def positions(self) -> dict[TopicPartition, int]:
        """Every partition's current position (for the final, synchronous commit)."""
        return {t.tp: p for t in self._partitions.values() if (p := t.position()) is not None}

    def mark_committed(self, positions: dict[TopicPartition, int]) -> None:
        for tp, position in positions.items():
            tracker = self._partitions.get(tp)
            if tracker is not None and (tracker.committed is None or position > tracker.committed):
                tracker.committed = position

    def oldest_pending_timestamp(self) -> float | None:
        stamps = [t.oldest_pending_timestamp() for t in self._partitions.values()]
        present = [s for s in stamps if s is not None]
        return min(present) if present else None
