"""Per-source batches of events, closed by count or by linger time.

Events that may share a request (same event source and source id, same test event
code: a :class:`~processor.payload.BatchKey`) collect in one open batch. A batch closes
when it holds ``max_events`` (TikTok's limit is 1,000) or when its oldest event
has waited ``linger_s``. Each event travels with an opaque ``ref``, the
pipeline's handle for acknowledging it once the request that carried it is
finished. Pure bookkeeping: the clock is passed in, nothing blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from processor.mapping import MappedEvent
from processor.payload import MAX_EVENTS_PER_REQUEST, BatchKey, batch_key


class PendingEvent(NamedTuple):
    """An event waiting for TikTok, with the handle that acknowledges it: its name,
    the mapping that made it and its ``data[]`` entry as JSON. (No payload dict: what
    waits for TikTok, up to ``delivery.max_buffered_events`` of it, is kept small and
    out of the garbage collector's way.)"""

    ref: Any
    event: str
    mapping: str
    data: bytes
    #: Its match keys (:mod:`processor.matchkeys`), counted once TikTok accepts it.
    match_keys: int = 0

    @classmethod
    def of(cls, ref: Any, event: MappedEvent) -> PendingEvent:
        return cls(ref, event.payload["event"], event.mapping, event.data, event.match_keys)

    @property
    def payload(self) -> dict[str, Any]:
        """The ``data[]`` entry, decoded (for diagnostics and tests)."""
        payload: dict[str, Any] = orjson.loads(self.data)
        return payload


@dataclass(slots=True)
class Batch:
    """Events for one request. ``opened`` is when its first event arrived."""

    key: BatchKey
    items: list[PendingEvent] = field(default_factory=list)
    opened: float = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, for isolating the bad events of a rejected batch."""
        middle = len(self.items) // 2
        return (
            Batch(self.key, self.items[:middle], self.opened),
            Batch(self.key, self.items[middle:], self.opened),
        )


class Batcher:
    """Collects events into batches per :class:`BatchKey`."""

    def __init__(self, *, max_events: int = MAX_EVENTS_PER_REQUEST, linger_s: float = 0.2) -> None:
        if not 1 <= max_events <= MAX_EVENTS_PER_REQUEST:
            raise ValueError(f"max_events must be 1..{MAX_EVENTS_PER_REQUEST}, not {max_events}")
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        self._max = max_events
        self._linger = linger_s
        # Keyed by BatchKey, looked up with plain (source, source id, test code) tuples.
        self._open: dict[tuple[str, str, str | None], Batch] = {}
        self._buffered = 0

    @property
    def buffered(self) -> int:
        """Events in open batches."""
        return self._buffered

    def add(self, ref: Any, event: MappedEvent, now: float) -> Batch | None:
        """Add one event; returns the batch it filled, if it filled one."""
        # A plain tuple equals its BatchKey: the NamedTuple is built for new batches only.
        batch = self._open.get((event.event_source, event.event_source_id, event.test_event_code))
        if batch is None:
            key = batch_key(event)
            batch = self._open[key] = Batch(key, [], now)
        batch.items.append(PendingEvent.of(ref, event))
        self._buffered += 1
        if len(batch.items) >= self._max:
            del self._open[batch.key]
            self._buffered -= len(batch.items)
            return batch
        return None

    def due(self, now: float) -> list[Batch]:
        """Batches whose oldest event has waited ``linger_s`` (closes them)."""
        ready = [b for b in self._open.values() if now - b.opened >= self._linger]
        for batch in ready:
            del self._open[batch.key]
            self._buffered -= len(batch.items)
        return ready

    def next_due(self) -> float | None:
        """When the next batch falls due, or None with nothing buffered."""
        if not self._open:
            return None
        return min(b.opened for b in self._open.values()) + self._linger

    def flush(self) -> list[Batch]:
        """Every open batch, now (stop, revoke)."""
        batches = list(self._open.values())
        self._open.clear()
        self._buffered = 0
        return batches

    def discard(self, keep: Any) -> list[PendingEvent]:
        """Drop the events whose ``ref`` fails ``keep(ref)`` (revoked partitions);
        returns what was dropped."""
        dropped: list[PendingEvent] = []
        for key, batch in list(self._open.items()):
            kept = [item for item in batch.items if keep(item.ref)]
            if len(kept) != len(batch.items):
                dropped += [item for item in batch.items if not keep(item.ref)]
                self._buffered -= len(batch.items) - len(kept)
                if kept:
                    batch.items = kept
                else:
                    del self._open[key]
        return dropped
