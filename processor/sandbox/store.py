"""What the sandbox keeps of accepted events: deduplication, documents, exact counts.

Owns the event store. Like TikTok it deduplicates on (pixel, event, event_id) within a
48-hour window, keeping the first event and counting the rest; events without an
``event_id`` are always kept. Test traffic (``test_event_code``) is deduplicated and
counted apart, as TikTok keeps it out of live data. Memory is bounded three ways:
documents are kept for the last ``max_documents`` events only, dedup keys for the last
``max_keys`` (as 64-bit hashes), and label-like counters stop growing new keys past
``MAX_COUNTER_KEYS``; the counts themselves stay exact. Not thread-safe: the sandbox
calls it under its lock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

#: TikTok deduplicates the same event + event_id within 48 hours of the first one.
DEDUP_WINDOW_S = 48 * 3600

#: TikTok matches nothing older than this (counted, never rejected: whether TikTok
#: rejects old events is unconfirmed).
MATCH_WINDOW_S = 28 * 24 * 3600

#: An event_time this far ahead of the sandbox's clock is counted as from the future.
FUTURE_SKEW_S = 300

#: Distinct keys per counter (event names, pixels, test codes) before the rest are
#: counted under OTHER: a misbehaving client must not grow the sandbox's memory.
MAX_COUNTER_KEYS = 10_000
OTHER = "(other)"


def bump(counter: Counter[str], key: str, n: int = 1) -> None:
    """``counter[key] += n`` without letting ``counter`` grow past ``MAX_COUNTER_KEYS``."""
    if key not in counter and len(counter) >= MAX_COUNTER_KEYS:
        key = OTHER
    counter[key] += n


#: A stored event as kept: the fields of :class:`StoredEvent`, in order.
_Document = tuple[int, str, str, str | None, str | None, str, float, bytes, str]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One accepted event as the sandbox received it (the document kept as JSON bytes,
    about a third of the memory of the decoded dict). ``pixel`` is the request's
    ``event_source_id``, whatever its ``event_source``."""

    seq: int
    pixel: str
    event: str
    event_id: str | None
    test_event_code: str | None
    request_id: str
    received_at: float
    document: bytes
    event_source: str = "web"

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_source": self.event_source,
            "pixel": self.pixel,
            "test_event_code": self.test_event_code,
            "request_id": self.request_id,
            "received_at": self.received_at,
            "event": orjson.loads(self.document),
        }


class EventCounts:
    """Exact counts for one traffic kind (live, or test)."""

    __slots__ = (
        "accepted",
        "by_event",
        "by_pixel",
        "by_source",
        "duplicates",
        "future",
        "old",
        "received",
    )

    def __init__(self) -> None:
        self.received = 0
        self.accepted = 0
        self.duplicates = 0
        self.old = 0
        self.future = 0
        self.by_event: Counter[str] = Counter()
        self.by_pixel: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()

    @property
    def rejected(self) -> int:
        return self.received - self.accepted - self.duplicates

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "older_than_28d": self.old,
            "future": self.future,
            "by_event": dict(self.by_event),
            "by_pixel": dict(self.by_pixel),
            "by_source": dict(self.by_source),
        }


class EventStore:
    """Deduplicating store with exact counts and a bounded window of documents."""

    def __init__(
        self,
        *,
        max_documents: int = 100_000,
        max_keys: int = 1_000_000,
        dedup_window_s: float = DEDUP_WINDOW_S,
    ) -> None:
        if max_documents < 0 or max_keys < 1 or dedup_window_s < 0:
            raise ValueError("max_documents ≥ 0, max_keys ≥ 1 and dedup_window_s ≥ 0")
        self._max_keys = max_keys
        self._window = dedup_window_s
        self._documents: deque[_Document] = deque(maxlen=max_documents)
        self._seen: set[int] = set()
        self._seen_order: deque[tuple[float, int]] = deque()
        self._seq = 0
        self.live = EventCounts()
        self.test = EventCounts()
        self.test_by_code: dict[str, Counter[str]] = {}

    def received(self, count: int, test_event_code: str | None) -> None:
        """Count events that arrived in a request that got as far as its body checks."""
        (self.test if test_event_code is not None else self.live).received += count

    def add(
        self,
        events: Iterable[dict[str, Any]],
        *,
        pixel: str,
        test_event_code: str | None,
        request_id: str,
        now: float,
        event_source: str = "web",
    ) -> tuple[int, int]:
        """Store a validated request's events. Returns (accepted, duplicates).
        ``pixel`` is the request's ``event_source_id``."""
        # The per-event loop is the sandbox's hot path (1000 events a request): locals, plain
        # tuples for documents (a frozen dataclass costs ~1 µs more each), no calls per event
        # beyond hashing and serialising.
        counts = self.test if test_event_code is not None else self.live
        seen, order, max_keys = self._seen, self._seen_order, self._max_keys
        self._forget_before(now - self._window)
        append, dumps, by_event = self._documents.append, orjson.dumps, counts.by_event
        old_before, future_after = now - MATCH_WINDOW_S, now + FUTURE_SKEW_S
        accepted = duplicates = old = future = 0
        seq = self._seq
        for event in events:
            name: str = event["event"]
            event_id: str | None = event.get("event_id")
            if event_id is not None:
                # A 64-bit hash, not the tuple: a million keys then cost ~70 MB, not ~400 MB.
                # A false duplicate needs a hash collision (odds ~1e-8 at a million keys).
                key = hash((test_event_code, pixel, name, event_id))
                if key in seen:
                    duplicates += 1
                    continue
                if len(order) >= max_keys:
                    seen.discard(order.popleft()[1])
                seen.add(key)
                order.append((now, key))
            accepted += 1
            seq += 1
            append(
                (
                    seq,
                    pixel,
                    name,
                    event_id,
                    test_event_code,
                    request_id,
                    now,
                    dumps(event),
                    event_source,
                )
            )
            if name in by_event:
                by_event[name] += 1
            else:
                bump(by_event, name)
            event_time = event["event_time"]
            if event_time < old_before:
                old += 1
            elif event_time > future_after:
                future += 1
        self._seq = seq
        counts.accepted += accepted
        counts.duplicates += duplicates
        counts.old += old
        counts.future += future
        if accepted:
            bump(counts.by_pixel, pixel, accepted)
            bump(counts.by_source, event_source, accepted)
        if test_event_code is not None:
            self._count_test_code(test_event_code, accepted, duplicates)
        return accepted, duplicates

    def _forget_before(self, horizon: float) -> None:
        """Drop dedup keys first seen before ``horizon`` (TikTok's 48-hour window)."""
        order, seen = self._seen_order, self._seen
        while order and order[0][0] < horizon:
            seen.discard(order.popleft()[1])

    def _count_test_code(self, code: str, accepted: int, duplicates: int) -> None:
        if code not in self.test_by_code and len(self.test_by_code) >= MAX_COUNTER_KEYS:
            code = OTHER
        per_code = self.test_by_code.setdefault(code, Counter())
        per_code["accepted"] += accepted
        per_code["duplicates"] += duplicates

    def find(
        self,
        *,
        event: str | None = None,
        pixel: str | None = None,
        event_id: str | None = None,
        test_event_code: str | None = None,
        scope: str = "all",
        limit: int = 1000,
    ) -> list[StoredEvent]:
        """The latest ``limit`` stored events matching every filter given, oldest first.
        ``scope`` is ``all``, ``live`` or ``test``."""
        matches: list[StoredEvent] = []
        for document in reversed(self._documents):
            if len(matches) >= limit:
                break
            _, stored_pixel, name, stored_id, code, *_ = document
            if (
                (event is None or name == event)
                and (pixel is None or stored_pixel == pixel)
                and (event_id is None or stored_id == event_id)
                and (test_event_code is None or code == test_event_code)
                and (scope != "live" or code is None)
                and (scope != "test" or code is not None)
            ):
                matches.append(StoredEvent(*document))
        matches.reverse()
        return matches

    def to_json(self) -> dict[str, Any]:
        test = self.test.to_json()
        test["by_test_code"] = {code: dict(c) for code, c in self.test_by_code.items()}
        return {
            "events": self.live.to_json(),
            "test_events": test,
            "stored": {
                "documents": len(self._documents),
                "max_documents": self._documents.maxlen,
                "dedup_keys": len(self._seen),
                "max_dedup_keys": self._max_keys,
            },
        }
