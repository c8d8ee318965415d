"""The sandbox's event store, tokens and body checks, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from processor.errors import ConfigError
from processor.sandbox.store import DEDUP_WINDOW_S, MAX_COUNTER_KEYS, OTHER, EventStore
from processor.sandbox.tokens import Token, TokenRegistry, parse_tokens
from processor.sandbox.validation import check_batch_size, check_body, find_unhashed
from processor.schemas import tiktok_request_validator

PIXEL = "D34FV3JC77U1PDQ72P1G"
NOW = 1_767_225_600.0


def ev(event_id: str | None, name: str = "Lead", event_time: float = NOW) -> dict[str, Any]:
    event: dict[str, Any] = {"event": name, "event_time": int(event_time)}
    if event_id is not None:
        event["event_id"] = event_id
    return event


def add(store: EventStore, events: list[dict[str, Any]], now: float = NOW, **kw: Any) -> Any:
    kw.setdefault("pixel", PIXEL)
    kw.setdefault("test_event_code", None)
    return store.add(events, request_id="r", now=now, **kw)


def test_duplicates_within_48_hours_are_counted_and_dropped_after_it_kept() -> None:
    store = EventStore()
    assert add(store, [ev("a"), ev("a"), ev(None), ev(None)]) == (3, 1)
    assert add(store, [ev("a")], now=NOW + DEDUP_WINDOW_S - 1) == (0, 1)
    assert add(store, [ev("a")], now=NOW + DEDUP_WINDOW_S + 1) == (1, 0)
    assert (store.live.accepted, store.live.duplicates) == (4, 2)


def test_the_dedup_key_is_pixel_event_and_event_id_and_test_traffic_is_apart() -> None:
    store = EventStore()
    add(store, [ev("a")])
    assert add(store, [ev("a", name="Purchase")]) == (1, 0)
    assert add(store, [ev("a")], pixel="OTHERPIXEL1") == (1, 0)
    assert add(store, [ev("a")], test_event_code="T1") == (1, 0)
    assert add(store, [ev("a")], test_event_code="T1") == (0, 1)
    assert store.live.accepted == 3
    assert store.test.accepted == 1
    assert dict(store.test_by_code["T1"]) == {"accepted": 1, "duplicates": 1}


def test_memory_is_bounded_but_counts_stay_exact() -> None:
    store = EventStore(max_documents=3, max_keys=5)
    add(store, [ev(str(i)) for i in range(10)])
    assert store.live.accepted == 10
    assert [s.event_id for s in store.find()] == ["7", "8", "9"]
    doc = store.to_json()["stored"]
    assert doc["documents"] == 3
    assert doc["dedup_keys"] == 5
    assert add(store, [ev("9")]) == (0, 1)  # recent keys are still known
    assert add(store, [ev("0")]) == (1, 0)  # the oldest were forgotten


def test_old_and_future_events_are_counted_never_refused() -> None:
    store = EventStore()
    events = [ev("old", event_time=NOW - 29 * 86400), ev("future", event_time=NOW + 3600)]
    assert add(store, events) == (2, 0)
    assert (store.live.old, store.live.future) == (1, 1)


def test_counters_stop_growing_new_keys() -> None:
    store = EventStore(max_documents=0)
    add(store, [ev(None, name=f"E{i}") for i in range(MAX_COUNTER_KEYS + 5)])
    assert len(store.live.by_event) == MAX_COUNTER_KEYS + 1
    assert store.live.by_event[OTHER] == 5


def test_find_filters_and_returns_the_latest_oldest_first() -> None:
    store = EventStore()
    add(store, [ev(str(i), name="A" if i % 2 else "B") for i in range(10)])
    assert [s.event_id for s in store.find(event="A", limit=2)] == ["7", "9"]
    assert store.find(event_id="4")[0].event == "B"
    assert store.find(scope="test") == []


def test_tokens_are_kept_as_digests_with_sticky_labels() -> None:
    registry = TokenRegistry(["alpha", Token("beta", label="b", expired=True)])
    assert registry.check(b"alpha") == (None, registry.check(b"alpha")[1])
    assert registry.check(b"beta")[0] == 40102
    assert registry.check(b"gamma")[0] == 40105
    assert registry.check(None)[0] == registry.check(b"  ")[0] == 40104
    registry.replace(["gamma", "alpha"])
    assert [t["label"] for t in registry.to_json()] == ["token-3", "token-1"]
    assert "alpha" not in repr(vars(registry))
    registry.break_all(40102)
    assert registry.check(b"alpha")[0] == 40102
    registry.break_all(40105)
    assert registry.check(b"alpha")[0] == 40105


def test_token_documents_are_checked_without_quoting_the_token() -> None:
    assert [t.label for t in parse_tokens(["x", {"token": "y", "label": "why"}])] == [None, "why"]
    with pytest.raises(ConfigError) as raised:
        parse_tokens([{"token": "secret-value", "expired": "yes", "pixels": "P"}, 5])
    assert len(raised.value.problems) == 3
    assert "secret-value" not in str(raised.value)
    with pytest.raises(ConfigError):
        Token(" ")


def test_batch_size_and_hash_checks() -> None:
    assert check_batch_size([{}] * 1000) is None
    rejection = check_batch_size([{}] * 1001)
    assert rejection is not None
    assert rejection.code == 40061
    assert check_batch_size("not a list") is None  # the schema's business
    digest = "a" * 64
    data = [{"user": {"email": digest}}, {"user": {"phone": [digest, "A" * 64]}}]
    assert find_unhashed(data) == "data[1].user.phone[1]"
    assert find_unhashed([{"user": {"email": 5}}, "x", {"user": None}]) is None


def test_check_body_prefers_the_specific_code() -> None:
    validate = tiktok_request_validator()
    body: dict[str, Any] = {
        "event_source": "web",
        "event_source_id": PIXEL,
        "data": [ev("a"), {**ev("b"), "event_id": 5, "user": {"email": "raw@example.com"}}],
    }
    first = check_body(body, validate)
    assert first is not None
    assert (first.code, "data[1].user.email" in first.message) == (40062, True)
    body["data"][1]["user"] = {}
    second = check_body(body, validate)
    assert second is not None
    assert second.code == 40002
    assert second.message == 'Invalid value for data[1].event_id: not of type "string"'
