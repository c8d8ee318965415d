"""The sandbox's event store against a plain model of it, and what it leaves the GC.

The model is the store's contract written the obvious way: one event at a time, the full
(test code, pixel, event, event_id) tuple as the dedup key, a bounded deque of
documents. Whatever order of requests, bounds and clock, the store must answer, count
and find exactly what the model does, whether or not it is handed the request body.
"""

from __future__ import annotations

import gc
import types
from collections import Counter, deque
from dataclasses import astuple
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.sandbox.store import (
    DEDUP_WINDOW_S,
    FUTURE_SKEW_S,
    MATCH_WINDOW_S,
    EventStore,
    StoredEvent,
)

NOW = 1_767_225_600.0
PIXELS = ("D34FV3JC77U1PDQ72P1G", "C9ZZZZ7777XXXXXXXXXX")


class Model:
    """The store's behaviour, one event at a time."""

    def __init__(self, max_documents: int, max_keys: int) -> None:
        self.max_keys = max_keys
        self.documents: deque[StoredEvent] = deque(maxlen=max_documents)
        self.seen: set[tuple[Any, ...]] = set()
        self.order: deque[tuple[float, tuple[Any, ...]]] = deque()
        self.seq = 0
        self.counts: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
        self.by_event: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}

    def add(
        self,
        events: list[dict[str, Any]],
        *,
        pixel: str,
        test_event_code: str | None,
        request_id: str,
        now: float,
        event_source: str,
    ) -> tuple[int, int]:
        while self.order and self.order[0][0] < now - DEDUP_WINDOW_S:
            self.seen.discard(self.order.popleft()[1])
        test = test_event_code is not None
        accepted = duplicates = 0
        for event in events:
            name, event_id = event["event"], event.get("event_id")
            if event_id is not None:
                key = (test_event_code, pixel, name, event_id)
                if key in self.seen:
                    duplicates += 1
                    continue
                if len(self.order) >= self.max_keys:
                    self.seen.discard(self.order.popleft()[1])
                self.seen.add(key)
                self.order.append((now, key))
            accepted += 1
            self.seq += 1
            self.documents.append(
                StoredEvent(
                    self.seq,
                    pixel,
                    name,
                    event_id,
                    test_event_code,
                    request_id,
                    now,
                    orjson.dumps(event),
                    event_source,
                )
            )
            self.by_event[test][name] += 1
            if event["event_time"] < now - MATCH_WINDOW_S:
                self.counts[test]["old"] += 1
            elif event["event_time"] > now + FUTURE_SKEW_S:
                self.counts[test]["future"] += 1
        self.counts[test]["accepted"] += accepted
        self.counts[test]["duplicates"] += duplicates
        return accepted, duplicates

    def find(self, **filters: Any) -> list[StoredEvent]:
        event, pixel = filters.get("event"), filters.get("pixel")
        event_id, code = filters.get("event_id"), filters.get("test_event_code")
        scope, limit = filters.get("scope", "all"), filters.get("limit", 1000)
        found = [
            d
            for d in self.documents
            if (event is None or d.event == event)
            and (pixel is None or d.pixel == pixel)
            and (event_id is None or d.event_id == event_id)
            and (code is None or d.test_event_code == code)
            and (scope != "live" or d.test_event_code is None)
            and (scope != "test" or d.test_event_code is not None)
        ]
        return found[max(0, len(found) - limit) :] if limit > 0 else []


an_event = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["Lead", "Purchase"]),
        "event_time": st.sampled_from([int(NOW), int(NOW - 29 * 86400), int(NOW + 3600)]),
    },
    optional={"event_id": st.sampled_from(["a", "b", "c", "d", "e", "f"])},
)
a_request = st.fixed_dictionaries(
    {
        "events": st.lists(an_event, min_size=1, max_size=8),
        "pixel": st.sampled_from(PIXELS),
        "test_event_code": st.sampled_from([None, None, "T1"]),
        "advance": st.sampled_from([0.0, 0.0, 1.0, DEDUP_WINDOW_S + 1]),
        "with_body": st.booleans(),
        "padded": st.booleans(),
    }
)
QUERIES: list[dict[str, Any]] = [
    {},
    {"limit": 2},
    {"limit": 0},
    {"event": "Lead"},
    {"event_id": "a"},
    {"pixel": PIXELS[1], "limit": 3},
    {"test_event_code": "T1"},
    {"scope": "live"},
    {"scope": "test", "event": "Purchase"},
]


def a_body(request: dict[str, Any]) -> bytes:
    doc = {"event_source": "web", "event_source_id": request["pixel"], "data": request["events"]}
    if request["padded"]:  # whitespace a client may send: more bytes, the same events
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b" " * 20_000
    return orjson.dumps(doc)


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(a_request, min_size=1, max_size=12),
    max_documents=st.sampled_from([0, 1, 3, 7, 1000]),
    max_keys=st.sampled_from([1, 2, 3, 5, 1000]),
)
def test_the_store_answers_counts_and_finds_what_the_model_does(
    requests: list[dict[str, Any]], max_documents: int, max_keys: int
) -> None:
    store = EventStore(max_documents=max_documents, max_keys=max_keys)
    model = Model(max_documents, max_keys)
    now = NOW
    for number, request in enumerate(requests):
        now += request["advance"]
        common = {
            "pixel": request["pixel"],
            "test_event_code": request["test_event_code"],
            "request_id": f"r{number}",
            "now": now,
            "event_source": "web",
        }
        body = a_body(request) if request["with_body"] else None
        events = orjson.loads(a_body(request))["data"]
        assert store.add(events, body=body, **common) == model.add(request["events"], **common)
        assert len(store.to_json()["stored"]) == 4
        assert store.to_json()["stored"]["dedup_keys"] == len(model.seen)
        assert store.to_json()["stored"]["documents"] == len(model.documents)
    for test, counts in ((False, store.live), (True, store.test)):
        expected = model.counts[test]
        assert (counts.accepted, counts.duplicates) == (
            expected["accepted"],
            expected["duplicates"],
        )
        assert (counts.old, counts.future) == (expected["old"], expected["future"])
        assert dict(counts.by_event) == dict(model.by_event[test])
    for query in QUERIES:
        assert [astuple(s) for s in store.find(**query)] == [
            astuple(s) for s in model.find(**query)
        ]


def test_a_kept_body_hands_out_each_event_as_it_was_sent() -> None:
    events = [{"event": "Lead", "event_time": int(NOW), "event_id": str(i)} for i in range(5)]
    events[2]["properties"] = {"value": 1.5, "contents": [{"content_id": "é-1"}]}
    body = orjson.dumps({"event_source": "web", "event_source_id": PIXELS[0], "data": events})
    kept, serialised = EventStore(max_documents=4), EventStore(max_documents=4)
    for store, given_body in ((kept, body), (serialised, None)):
        store.add(
            orjson.loads(body)["data"],
            pixel=PIXELS[0],
            test_event_code=None,
            request_id="r",
            now=NOW,
            body=given_body,
        )
    found = kept.find()
    assert found == serialised.find()
    assert [s.to_json()["event"] for s in found] == events[1:]
    assert [s.seq for s in found] == [2, 3, 4, 5]


def walked(root: object) -> int:
    """References a full collection follows from ``root``'s data: its referents', and on
    through every object the collector tracks (classes and modules aside)."""
    visited: set[int] = set()
    stack, count = [root], 0
    while stack:
        for referent in gc.get_referents(stack.pop()):
            count += 1
            if isinstance(referent, type | types.ModuleType):
                continue
            if gc.is_tracked(referent) and id(referent) not in visited:
                visited.add(id(referent))
                stack.append(referent)
    return count


def test_what_the_store_keeps_gives_the_collector_nothing_per_event_to_walk() -> None:
    def store_after(requests: int) -> EventStore:
        store = EventStore(max_documents=100_000)
        for r in range(requests):
            events = [
                {"event": "Lead", "event_time": int(NOW), "event_id": f"{r}-{i}"}
                for i in range(500)
            ]
            events[0].pop("event_id")  # one event by event, the others in one go
            body = orjson.dumps({"data": events}) if r % 2 else None
            store.add(events, pixel=PIXELS[0], test_event_code=None, request_id="r", now=NOW)
            store.add(
                events[1:],
                pixel=PIXELS[1],
                test_event_code=None,
                request_id="r",
                now=NOW,
                body=body,
            )
        gc.collect()
        return store

    few, many = store_after(2), store_after(20)
    assert many.to_json()["stored"]["documents"] == 20 * 999
    # A handful of references a request, where one or more an event would be thousands.
    assert walked(many) - walked(few) < 18 * 50
