"""The delivery ledger: what "done" means, which offset is safe to commit, and when.

The at-least-once contract, whole (each rule has its test in tests/unit/test_ledger.py):

1. **Tracked.** Every record the consumer hands out is tracked, in offset order, with
   its work: one unit for each event mapped from it and one for each dead letter it
   needs. A record with no work (filtered out on purpose) is done at once.
2. **Done.** A unit is done when TikTok accepted its event (code 0, or 20001 partial
   success), or when its dead letter was acknowledged by the broker (acks=all). A
   record is done when all its units are. Nothing else finishes a unit: not a retry,
   not a halt, not a stop.
3. **Watermark.** A partition's position is its lowest offset not done, or one past its
   last record when all are done (the contiguous watermark, as in Confluent's Parallel
   Consumer and Redpanda Connect's checkpointer). It never passes a record that is
   buffered, in flight, retrying, or rejected without its dead letter acknowledged.
4. **Timing.** Positions that moved are committed every ``commit_interval_s``, and
   within :data:`DEAD_LETTER_COMMIT_S` of a dead letter's acknowledgement (until then
   a crash would write it again on redelivery). A commit the broker refuses is
   forgotten, and the same position is committed again at the next turn that is due.
5. **Fencing.** Each assignment of a partition gets a fresh :class:`PartitionLedger`.
   Revoked or lost, it is fenced: work that finishes later for its records changes
   nothing and is reported as fenced, so the loop never commits over the partition's
   next owner, never counts the record's latency, and never dead-letters it (the next
   owner reads it again). On revoke the loop first lets in-flight work finish (up to
   the drain timeout) and commits the fenced position synchronously; on loss it
   commits nothing.
6. **Redelivery.** A record at an offset already tracked in this assignment (the
   client rewound its fetch position) is reported as seen and not tracked again: it
   is done or on its way already.

A crash anywhere therefore restarts from the last committed position: records after
it may be sent twice (TikTok deduplicates by ``event`` + ``event_id``, and the event id
derives from topic, partition and offset), but none is skipped.

Not thread-safe: owned by the poll thread (see docs/ARCHITECTURE.md, "Threads").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final

from processor.kafka.api import Record, TopicPartition

#: How soon offsets are committed after a dead letter is acknowledged, seconds.
DEAD_LETTER_COMMIT_S: Final = 0.1

#: The (topic, partition, offset) a record's event ids derive from (a replayed dead
#: letter keeps its source record's).
Source = tuple[str, int, int]


class Ticket:
    """One tracked record with work outstanding: ``remaining`` units (events to be
    accepted, dead letters to be acknowledged). It carries what a dead letter of the
    record needs: the ``record`` and the ``source`` its event ids derive from."""

    __slots__ = ("ledger", "offset", "record", "remaining", "source", "timestamp")

    def __init__(  # noqa: PLR0917 - built once per record: positional is the cheapest call
        self,
        ledger: PartitionLedger,
        offset: int,
        remaining: int,
        timestamp: float,
        record: Record,
        source: Source,
    ) -> None:
        self.ledger = ledger
        self.offset = offset
        self.remaining = remaining
        self.timestamp = timestamp
        self.record = record
        self.source = source


class PartitionLedger:
    """The records of one partition, for one assignment of it."""

    __slots__ = ("_next", "_pending", "_tickets", "active", "committed", "confirmed", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        #: False once revoked or lost (rule 5).
        self.active = True
        #: The last position sent to the broker for this assignment (rule 4).
        self.committed: int | None = None
        #: The last position the broker confirmed (a synchronous commit).
        self.confirmed: int | None = None
        self._tickets: deque[Ticket] = deque()
        self._pending = 0
        self._next: int | None = None  # one past the highest offset tracked

    def seen(self, offset: int) -> bool:
        """Whether ``offset`` was tracked already in this assignment (rule 6)."""
        return self._next is not None and offset < self._next

    def track(
        self, offset: int, work: int, timestamp: float, record: Record, source: Source
    ) -> Ticket | None:
        """A consumed record with ``work`` units outstanding; None when it has none (done
        already, rule 1)."""
        if self._next is not None and offset < self._next:
            raise RuntimeError(f"{self.tp}: offset {offset} tracked after {self._next - 1}")
        self._next = offset + 1
        if work <= 0:
            return None
        ticket = Ticket(self, offset, work, timestamp, record, source)
        self._tickets.append(ticket)
        self._pending += 1
        return ticket

    def _finish(self, ticket: Ticket) -> None:
        ticket.remaining -= 1
        if ticket.remaining > 0:
            return
        if ticket.remaining < 0:
            raise RuntimeError(
                f"{self.tp}: offset {ticket.offset} finished more often than tracked"
            )
        self._pending -= 1
        tickets = self._tickets
        while tickets and tickets[0].remaining == 0:
            tickets.popleft()

    def position(self) -> int | None:
        """The offset to commit: the lowest not done, or one past the last tracked record
        (rule 3); None before the first record."""
        if self._tickets:
            return self._tickets[0].offset
        return self._next

    def pending(self) -> int:
        """Records not yet done."""
        return self._pending

    def oldest_pending_timestamp(self) -> float | None:
        """Timestamp of the record holding the position back."""
        return self._tickets[0].timestamp if self._tickets else None

    def to_commit(self) -> int | None:
        """The position when it moved past what was committed, else None."""
        position = self.position()
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position


class Ledger:
    """The :class:`PartitionLedger` of every partition this member owns, and the commit
    schedule."""

    def __init__(
        self, commit_interval_s: float, *, dead_letter_commit_s: float = DEAD_LETTER_COMMIT_S
    ) -> None:
        # Keyed by TopicPartition; plain (topic, partition) tuples find the same entry.
        self._partitions: dict[tuple[str, int], PartitionLedger] = {}
        self._commit_interval_s = commit_interval_s
        self._dead_letter_commit_s = dead_letter_commit_s
        self._last_commit = 0.0
        self._dead_letter_acked = False

    # -- assignment and fencing (rule 5) ---------------------------------------------

    def assign(self, tp: TopicPartition) -> PartitionLedger:
        """A fresh ledger for a newly assigned partition (any old one is fenced)."""
        self.fence(tp)
        ledger = self._partitions[tp] = PartitionLedger(tp)
        return ledger

    def fence(self, tp: TopicPartition) -> PartitionLedger | None:
        """Stop tracking ``tp`` (revoked or lost): its records' later work changes nothing."""
        ledger = self._partitions.pop(tp, None)
        if ledger is not None:
            ledger.active = False
        return ledger

    def get(self, tp: tuple[str, int]) -> PartitionLedger | None:
        """The ledger of an owned partition; None for one that is not ours (any more)."""
        return self._partitions.get(tp)

    def __iter__(self) -> Iterator[PartitionLedger]:
        return iter(list(self._partitions.values()))

    def __len__(self) -> int:
        return len(self._partitions)

    # -- done (rule 2) ---------------------------------------------------------------

    @staticmethod
    def live(ticket: Ticket) -> bool:
        """Whether ``ticket``'s partition is still this assignment's (not fenced)."""
        return ticket.ledger.active

    @staticmethod
    def accepted(ticket: Ticket) -> bool:
        """TikTok accepted one of ``ticket``'s events. False when fenced (nothing changed)."""
        ledger = ticket.ledger
        if not ledger.active:
            return False
        ledger._finish(ticket)
        return True

    def dead_lettered(self, ticket: Ticket) -> bool:
        """The broker acknowledged one of ``ticket``'s dead letters (or, replaying, a
        rejection is only counted). False when fenced. Brings the next commit forward."""
        ledger = ticket.ledger
        if not ledger.active:
            return False
        ledger._finish(ticket)
        self._dead_letter_acked = True
        return True

    def pending(self) -> int:
        return sum(p.pending() for p in self._partitions.values())

    def oldest_pending_timestamp(self) -> float | None:
        stamps = [p.oldest_pending_timestamp() for p in self._partitions.values()]
        present = [s for s in stamps if s is not None]
        return min(present) if present else None

    # -- commits (rules 3 and 4) -----------------------------------------------------

    def due(self, now: float) -> dict[TopicPartition, int]:
        """The positions to commit now: those that moved, once the interval has passed (or
        soon after a dead letter was acknowledged); empty otherwise."""
        since = now - self._last_commit
        soon = self._dead_letter_acked and since >= self._dead_letter_commit_s
        if not soon and since < self._commit_interval_s:
            return {}
        self._dead_letter_acked = False
        self._last_commit = now
        out = {}
        for ledger in self._partitions.values():
            position = ledger.to_commit()
            if position is not None:
                out[ledger.tp] = position
        return out

    def positions(self) -> dict[TopicPartition, int]:
        """Every owned partition's position (the final commit of a stop)."""
        return {p.tp: pos for p in self._partitions.values() if (pos := p.position()) is not None}

    @staticmethod
    def handover(ledgers: Iterable[PartitionLedger]) -> dict[TopicPartition, int]:
        """The positions to commit synchronously for revoked partitions: each one's
        position unless the broker confirmed exactly it already."""
        return {
            p.tp: pos for p in ledgers if (pos := p.position()) is not None and pos != p.confirmed
        }

    def committed(self, positions: dict[TopicPartition, int], *, confirmed: bool = False) -> None:
        """``positions`` were sent to the broker (``confirmed``: and it answered yes)."""
        for tp, position in positions.items():
            ledger = self._partitions.get(tp)
            if ledger is None:
                continue
            if ledger.committed is None or position > ledger.committed:
                ledger.committed = position
            if confirmed:
                ledger.confirmed = position

    def commit_failed(self, partitions: Iterable[TopicPartition]) -> None:
        """The broker refused a commit: commit these partitions' positions again."""
        for tp in partitions:
            ledger = self._partitions.get(tp)
            if ledger is not None:
                ledger.committed = None
                ledger.confirmed = None
