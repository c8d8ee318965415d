"""What the sandbox keeps of accepted events: deduplication, documents, exact counts.

Owns the event store. Like TikTok it deduplicates on (pixel, event, event_id) within a
48-hour window, keeping the first event and counting the rest; events without an
``event_id`` are always kept. Test traffic (``test_event_code``) is deduplicated and
counted apart, as TikTok keeps it out of live data. Memory is bounded three ways:
documents are kept for the last ``max_documents`` events only, dedup keys for the last
``max_keys`` (as 64-bit hashes), and label-like counters stop growing new keys past
``MAX_COUNTER_KEYS``; the counts themselves stay exact. (A request body kept whole in
place of its documents stays until the last of them goes, so one request's body may
outlast the documents bound.) Not thread-safe: the sandbox calls it under its lock.

For the Test Events page (``processor/sandbox/page.py``) it also notes, in bounded queues,
the duplicates it drops and the requests the sandbox refuses, and selects the newest
documents without decoding them (:meth:`EventStore.recent`); the page decodes what it
shows outside the sandbox's lock. Noting costs a request with duplicates one object (its
duplicates are held as decoded, not copied) and a refused request one; a request whose
events are all new pays nothing for it.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice, repeat
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


def consume(iterator: Iterable[Any]) -> None:
    """Run ``iterator`` to its end, at C speed, keeping nothing."""
    deque(iterator, maxlen=0)


def bump(counter: Counter[str], key: str, n: int = 1) -> None:
    """``counter[key] += n`` without letting ``counter`` grow past ``MAX_COUNTER_KEYS``."""
    if key not in counter and len(counter) >= MAX_COUNTER_KEYS:
        key = OTHER
    counter[key] += n


#: What every event one request stored shares: its pixel, test event code, request id,
#: time of receipt and event source.
_Request = tuple[str, str | None, str, float, str]

#: The documents one request stored: the seq of the first, the request, each document's
#: event name and event_id (parallel tuples, in the order received), then the documents:
#: their JSON bytes, or the request body itself with the index in its ``data`` of the
#: first (0 for a tuple of documents).
_Chunk = tuple[
    int, _Request, tuple[str, ...], tuple[str | None, ...], tuple[bytes, ...] | bytes, int
]

#: A request body is kept whole, in place of its events' documents, only when every event
#: in it is stored and it takes at most this many bytes an event: whitespace and escapes
#: cannot make a document cost more than that.
MAX_BODY_BYTES_PER_DOCUMENT = 8 * 1024

#: Duplicates, and refused requests, the store notes for the Test Events page (each kind
#: apart; never more than it keeps documents).
MAX_NOTES = 1000

#: Bytes of refused request bodies the notes hold (the bodies are the request's own bytes,
#: not copies); past it the oldest refusals are forgotten.
MAX_REFUSED_BODY_BYTES = 32 * 1024 * 1024

#: Most kept request bodies one :meth:`EventStore.recent` call hands out for decoding: a
#: filter that matches one event a request must not make the page decode thousands.
MAX_RECENT_BODIES = 64


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


@dataclass(frozen=True, slots=True)
class DuplicateNote:
    """The events one request carried that were dropped as repeats of an earlier event +
    event_id (its last ``MAX_NOTES``), as decoded: held, never copied or re-encoded, so
    noting them costs a request one object. They are numbered ``first_number`` on among
    every note; ``after_seq`` is the seq of the last event stored before them."""

    first_number: int
    after_seq: int
    pixel: str
    test_event_code: str | None
    request_id: str
    received_at: float
    event_source: str
    events: tuple[dict[str, Any], ...]

    @property
    def last_number(self) -> int:
        return self.first_number + len(self.events) - 1


@dataclass(frozen=True, slots=True)
class RefusalNote:
    """One request the sandbox did not accept: TikTok's answer (``reply``, the envelope or
    an HTTP fault's text; empty when the connection was dropped) and the request body
    (None when over the notes' byte budget), both as the sandbox sent and received them."""

    number: int
    after_seq: int
    received_at: float
    request_id: str
    status: int
    code: int | None
    reply: bytes
    body: bytes | None
    dropped: bool = False


@dataclass(slots=True)
class Selection:
    """Some of the events one request stored (``indexes`` into its chunk, newest first);
    their documents are decoded only by :meth:`documents`, which needs no lock."""

    first_seq: int
    pixel: str
    test_event_code: str | None
    request_id: str
    received_at: float
    event_source: str
    names: tuple[str, ...]
    ids: tuple[str | None, ...]
    indexes: list[int]
    stored: tuple[bytes, ...] | bytes
    first: int

    def documents(self) -> list[tuple[int, dict[str, Any]]]:
        """(seq, document) of each selected event, newest first."""
        stored = self.stored
        if isinstance(stored, bytes):
            data = orjson.loads(stored)["data"]
            return [(self.first_seq + i, data[self.first + i]) for i in self.indexes]
        return [(self.first_seq + i, orjson.loads(stored[i])) for i in self.indexes]


@dataclass(frozen=True, slots=True)
class Recent:
    """What :meth:`EventStore.recent` found: the store's marks (its last seq and note
    number), the stored events, duplicates and refusals after the marks asked for (newest
    first), and whether the events stopped short of ``limit`` to bound decoding (then
    ``oldest_seq`` is the oldest seq they reach)."""

    seq: int
    notes: int
    selections: list[Selection]
    duplicates: list[DuplicateNote]
    refusals: list[RefusalNote]
    truncated: bool
    oldest_seq: int


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
    """Deduplicating store with exact counts and a bounded window of documents.

    What it keeps for long is held where the garbage collector has nothing to walk:
    documents in one chunk a request (tuples of str and bytes, which the collector stops
    tracking), dedup keys as ints in a dict (never tracked) with their first-seen order in
    ``array`` batches. A million keys or documents then add nothing to a collection, and
    each request of 1000 decoded events sets off several.

    A request whose events are all stored keeps its body as it came (when :meth:`add` is
    given it) rather than one serialised document an event: the same bytes, without
    writing them again. :meth:`find` decodes such a body again to hand out its documents.
    """

    def __init__(
        self,
        *,
        max_documents: int = 100_000,
        max_keys: int = 1_000_000,
        dedup_window_s: float = DEDUP_WINDOW_S,
    ) -> None:
        if max_documents < 0 or max_keys < 1 or dedup_window_s < 0:
            raise ValueError("max_documents ≥ 0, max_keys ≥ 1 and dedup_window_s ≥ 0")
        self._max_documents = max_documents
        self._max_keys = max_keys
        self._window = dedup_window_s
        #: One chunk per request that stored documents, oldest first.
        self._chunks: deque[_Chunk] = deque()
        self._documents = 0
        #: Dedup keys (64-bit hashes): a dict for membership only, its values unused.
        self._seen: dict[int, None] = {}
        #: The same keys in the order first seen: one (time, keys) batch per request.
        self._key_batches: deque[tuple[float, array[int]]] = deque()
        #: How many keys at the head of the oldest batch are already forgotten.
        self._key_first = 0
        self._seq = 0
        self._max_notes = min(max_documents, MAX_NOTES)
        self._notes = 0
        self._duplicates: deque[DuplicateNote] = deque()
        self._duplicates_held = 0
        self._refusals: deque[RefusalNote] = deque()
        self._refused_body_bytes = 0
        #: Requests refused (exact, like the counts).
        self.refused_requests = 0
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
        body: bytes | None = None,
    ) -> tuple[int, int]:
        """Store a validated request's events. Returns (accepted, duplicates).
        ``pixel`` is the request's ``event_source_id``; ``body``, when given, is the JSON
        request body whose ``data`` the events are (decoded, unchanged)."""
        counts = self.test if test_event_code is not None else self.live
        self._forget_before(now - self._window)
        batch = events if isinstance(events, list) else list(events)
        fresh = self._all_fresh(batch, test_event_code, pixel, now)
        if fresh is not None:
            kept, (names, ids), duplicates = batch, fresh, 0
            times = [event["event_time"] for event in batch]
        else:
            kept, names, ids, times, dropped = self._deduplicate(batch, test_event_code, pixel, now)
            duplicates = len(dropped)
        accepted = len(kept)
        request = (pixel, test_event_code, request_id, now, event_source)
        whole = body if not duplicates else None
        self._keep_documents(kept, names, ids, request, whole)
        self._seq += accepted
        counts.accepted += accepted
        counts.duplicates += duplicates
        if accepted:
            self._count_accepted(counts, names, times, now)
            bump(counts.by_pixel, pixel, accepted)
            bump(counts.by_source, event_source, accepted)
        if test_event_code is not None:
            self._count_test_code(test_event_code, accepted, duplicates)
        if duplicates:
            self._note_duplicates(dropped, request)
        return accepted, duplicates

    def _all_fresh(
        self, events: list[dict[str, Any]], test_event_code: str | None, pixel: str, now: float
    ) -> tuple[list[str], list[str | None]] | None:
        """The events' names and event_ids when every event has an event_id seen neither
        before nor earlier in ``events``, and there are no more events than the store keeps
        keys; their keys are then remembered as first seen ``now``. None, and nothing
        remembered, otherwise.

        The common request, judged in a few passes at C speed rather than event by event:
        with no duplicate in it, forgetting the oldest keys before remembering the new ones
        ends where forgetting one before each new key would."""
        names: list[str] = [event["event"] for event in events]
        ids: list[str | None] = [event.get("event_id") for event in events]
        if not events or None in ids or len(events) > self._max_keys:
            return None
        keys = list(map(hash, zip(repeat(test_event_code), repeat(pixel), names, ids)))
        new = dict.fromkeys(keys)
        seen = self._seen
        if len(new) != len(keys) or not seen.keys().isdisjoint(new):
            return None
        self._forget_oldest_keys(len(keys) - (self._max_keys - len(seen)))
        seen.update(new)
        self._key_batches.append((now, array("q", keys)))
        return names, ids

    def _deduplicate(
        self, events: list[dict[str, Any]], test_event_code: str | None, pixel: str, now: float
    ) -> tuple[list[dict[str, Any]], list[str], list[str | None], list[Any], list[dict[str, Any]]]:
        """The events not seen before, with their names, event_ids and event_times, and
        the duplicates. Their keys are remembered as first seen ``now``."""
        # Event by event, for the requests :meth:`_all_fresh` leaves (duplicates, events
        # without an event_id): locals, bound methods, no call per event beyond hashing.
        seen = self._seen
        keys: array[int] = array("q")
        self._key_batches.append((now, keys))
        remember = keys.append
        room = self._max_keys - len(seen)
        kept: list[dict[str, Any]] = []
        names: list[str] = []
        ids: list[str | None] = []
        times: list[Any] = []
        keep, name_of, id_of, time_of = kept.append, names.append, ids.append, times.append
        duplicates: list[dict[str, Any]] = []
        for event in events:
            name: str = event["event"]
            event_id: str | None = event.get("event_id")
            if event_id is not None:
                # A 64-bit hash, not the tuple: a million keys then cost ~70 MB, not ~400 MB.
                # A false duplicate needs a hash collision (odds ~1e-8 at a million keys).
                key = hash((test_event_code, pixel, name, event_id))
                if key in seen:
                    duplicates.append(event)
                    continue
                if room:
                    room -= 1
                else:
                    self._forget_oldest_key()
                seen[key] = None
                remember(key)
            keep(event)
            name_of(name)
            id_of(event_id)
            time_of(event["event_time"])
        if not keys:
            self._key_batches.pop()
        return kept, names, ids, times, duplicates

    def _keep_documents(
        self,
        kept: list[dict[str, Any]],
        names: list[str],
        ids: list[str | None],
        request: _Request,
        body: bytes | None,
    ) -> None:
        """Keep the documents of the last ``max_documents`` of the accepted ``kept``
        (numbered on from the store's last seq), dropping the oldest beyond the bound.
        ``body`` is the request body when ``kept`` is the whole of its ``data``."""
        count = len(kept)
        skip = max(0, count - self._max_documents)
        if skip == count:
            return  # the bound is 0, or nothing was accepted
        documents: tuple[bytes, ...] | bytes
        if body is not None and not skip and len(body) <= count * MAX_BODY_BYTES_PER_DOCUMENT:
            documents = body
        else:
            documents = tuple(map(orjson.dumps, kept[skip:]))
        chunks = self._chunks
        first_seq = self._seq + 1 + skip
        chunks.append((first_seq, request, tuple(names[skip:]), tuple(ids[skip:]), documents, 0))
        self._documents += count - skip
        excess = self._documents - self._max_documents
        while excess > 0:
            seq, oldest, old_names, old_ids, old_documents, first = chunks[0]
            held = len(old_names)
            if held <= excess:
                chunks.popleft()
            else:
                held = excess
                if isinstance(old_documents, bytes):
                    first += held
                else:
                    old_documents = old_documents[held:]
                chunks[0] = (
                    seq + held,
                    oldest,
                    old_names[held:],
                    old_ids[held:],
                    old_documents,
                    first,
                )
            self._documents -= held
            excess -= held

    def _count_accepted(
        self, counts: EventCounts, names: list[str], times: list[Any], now: float
    ) -> None:
        """Count accepted events by name, and those too old to match or from the future."""
        by_event = counts.by_event
        first = names[0]
        tally = {first: len(names)} if names.count(first) == len(names) else Counter(names)
        for name, n in tally.items():  # first-seen order, as one by one would
            if name in by_event:
                by_event[name] += n
            else:
                bump(by_event, name, n)
        old_before, future_after = now - MATCH_WINDOW_S, now + FUTURE_SKEW_S
        if min(times) < old_before or max(times) > future_after:
            ordered = sorted(times)
            counts.old += bisect_left(ordered, old_before)
            counts.future += len(ordered) - bisect_right(ordered, future_after)

    def _forget_oldest_keys(self, count: int) -> None:
        """Forget the ``count`` dedup keys seen first (the store holds at least as many)."""
        batches, seen = self._key_batches, self._seen
        while count > 0:
            keys = batches[0][1]
            first = self._key_first
            end = min(len(keys), first + count)
            consume(map(seen.__delitem__, keys[first:end]))
            count -= end - first
            if end == len(keys):
                batches.popleft()
                self._key_first = 0
            else:
                self._key_first = end

    def _forget_oldest_key(self) -> None:
        """Forget the dedup key seen first (the store holds at least one)."""
        batches = self._key_batches
        keys = batches[0][1]
        while self._key_first >= len(keys):  # a batch whose keys are all forgotten
            batches.popleft()
            self._key_first = 0
            keys = batches[0][1]
        del self._seen[keys[self._key_first]]
        self._key_first += 1

    def _forget_before(self, horizon: float) -> None:
        """Drop dedup keys first seen before ``horizon`` (TikTok's 48-hour window)."""
        batches, seen = self._key_batches, self._seen
        while batches and batches[0][0] < horizon:
            keys = batches.popleft()[1]
            for key in islice(keys, self._key_first, None):
                del seen[key]
            self._key_first = 0

    def _count_test_code(self, code: str, accepted: int, duplicates: int) -> None:
        if code not in self.test_by_code and len(self.test_by_code) >= MAX_COUNTER_KEYS:
            code = OTHER
        per_code = self.test_by_code.setdefault(code, Counter())
        per_code["accepted"] += accepted
        per_code["duplicates"] += duplicates

    def _note_duplicates(self, dropped: list[dict[str, Any]], request: _Request) -> None:
        """Note a request's duplicates, keeping the last ``max_notes`` of every request's."""
        if not self._max_notes:
            return
        events = tuple(dropped[-self._max_notes :])
        pixel, test_event_code, request_id, now, event_source = request
        notes = self._duplicates
        notes.append(
            DuplicateNote(
                self._notes + 1,
                self._seq,
                pixel,
                test_event_code,
                request_id,
                now,
                event_source,
                events,
            )
        )
        self._notes += len(events)
        self._duplicates_held += len(events)
        while self._duplicates_held > self._max_notes:
            self._duplicates_held -= len(notes.popleft().events)

    def refused(
        self,
        *,
        request_id: str,
        now: float,
        status: int,
        code: int | None,
        reply: bytes,
        body: bytes,
        dropped: bool = False,
    ) -> None:
        """Count a request the sandbox did not accept, and note it with its answer."""
        self.refused_requests += 1
        if not self._max_notes:
            return
        refusals = self._refusals
        budget = MAX_REFUSED_BODY_BYTES
        kept = body if len(body) <= budget else None
        self._refused_body_bytes += len(kept or b"")
        while refusals and (len(refusals) >= self._max_notes or self._refused_body_bytes > budget):
            self._refused_body_bytes -= len(refusals.popleft().body or b"")
        self._notes += 1
        refusals.append(
            RefusalNote(self._notes, self._seq, now, request_id, status, code, reply, kept, dropped)
        )

    def recent(
        self,
        *,
        after_seq: int = 0,
        after_note: int = 0,
        limit: int = 500,
        event: str | None = None,
        pixel: str | None = None,
        test_event_code: str | None = None,
        scope: str = "all",
        max_bodies: int = MAX_RECENT_BODIES,
    ) -> Recent:
        """The newest ``limit`` stored events after seq ``after_seq`` that match every
        filter given, and the notes with numbers after ``after_note`` (duplicates by the
        request's pixel and test event code, the events' names left to the caller;
        refusals unfiltered, their pixel is in their bodies), all newest first. Nothing is
        decoded here: a selection holds references to immutable chunks."""
        selections: list[Selection] = []
        wanted, bodies, truncated, oldest = limit, 0, False, self._seq + 1
        for seq, request, names, ids, documents, first in reversed(self._chunks):
            if wanted <= 0 or seq + len(names) - 1 <= after_seq:
                break
            req_pixel, code, request_id, received_at, source = request
            if not _matches(req_pixel, code, pixel, test_event_code, scope) or (
                event is not None and event not in names
            ):
                continue
            start = max(0, after_seq - seq + 1)
            indexes = [
                i
                for i in range(len(names) - 1, start - 1, -1)
                if event is None or names[i] == event
            ][:wanted]
            if not indexes:
                continue
            if isinstance(documents, bytes):
                if bodies >= max_bodies:
                    truncated = True
                    break
                bodies += 1
            wanted -= len(indexes)
            oldest = seq + indexes[-1]
            selections.append(
                Selection(
                    seq,
                    req_pixel,
                    code,
                    request_id,
                    received_at,
                    source,
                    names,
                    ids,
                    indexes,
                    documents,
                    first,
                )
            )
        duplicates = [
            note
            for note in reversed(self._duplicates)
            if note.last_number > after_note
            and _matches(note.pixel, note.test_event_code, pixel, test_event_code, scope)
        ]
        refusals = [note for note in reversed(self._refusals) if note.number > after_note]
        return Recent(self._seq, self._notes, selections, duplicates, refusals, truncated, oldest)

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
        for seq, request, names, ids, documents, first in reversed(self._chunks):
            stored_pixel, code, *_ = request
            if not _matches(stored_pixel, code, pixel, test_event_code, scope):
                continue
            data: list[Any] | None = None  # a kept body, decoded once it is needed
            for index in range(len(names) - 1, -1, -1):
                if len(matches) >= limit:
                    break
                name, stored_id = names[index], ids[index]
                if (event is None or name == event) and (event_id is None or stored_id == event_id):
                    if isinstance(documents, bytes):
                        if data is None:
                            data = orjson.loads(documents)["data"]
                        document = orjson.dumps(data[first + index])
                    else:
                        document = documents[index]
                    matches.append(_stored(seq + index, request, name, stored_id, document))
            if len(matches) >= limit:
                break
        matches.reverse()
        return matches

    def to_json(self) -> dict[str, Any]:
        test = self.test.to_json()
        test["by_test_code"] = {code: dict(c) for code, c in self.test_by_code.items()}
        return {
            "events": self.live.to_json(),
            "test_events": test,
            "stored": {
                "documents": self._documents,
                "max_documents": self._max_documents,
                "dedup_keys": len(self._seen),
                "max_dedup_keys": self._max_keys,
            },
        }


def _matches(
    stored_pixel: str,
    code: str | None,
    pixel: str | None,
    test_event_code: str | None,
    scope: str,
) -> bool:
    """Whether a request's pixel and test event code pass the filters (None: any)."""
    return not (
        (pixel is not None and stored_pixel != pixel)
        or (test_event_code is not None and code != test_event_code)
        or (scope == "live" and code is not None)
        or (scope == "test" and code is None)
    )


def _stored(
    seq: int, request: _Request, name: str, event_id: str | None, document: bytes
) -> StoredEvent:
    pixel, test_event_code, request_id, received_at, event_source = request
    return StoredEvent(
        seq, pixel, name, event_id, test_event_code, request_id, received_at, document, event_source
    )
