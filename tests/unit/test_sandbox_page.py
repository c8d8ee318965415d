"""The sandbox's Test Events page: the feed it polls and the page itself, without a browser."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

import httpx
import orjson
import pytest

from processor.sandbox import Sandbox, page
from processor.sandbox.state import SandboxState, TrackRequest
from processor.sandbox.store import MAX_RECENT_BODIES, MAX_REFUSED_BODY_BYTES, EventStore, Recent

PIXEL = "D34FV3JC77U1PDQ72P1G"
OTHER_PIXEL = "C9ZZZZ7777XXXXXXXXXX"
TOKEN = "tok-page"
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
NOW = 1_767_225_600.0


def an_event(event_id: str, name: str = "ViewContent", **user: Any) -> dict[str, Any]:
    return {
        "event": name,
        "event_time": 1_767_225_000,
        "event_id": event_id,
        "user": user or {"email": SHA},
    }


def send(
    state: SandboxState,
    events: list[dict[str, Any]],
    *,
    pixel: str = PIXEL,
    token: str = TOKEN,
    **top: Any,
) -> dict[str, Any]:
    body = {"event_source": "web", "event_source_id": pixel, "data": events, **top}
    reply = state.track(TrackRequest(token=token.encode(), body=orjson.dumps(body)))
    answer: dict[str, Any] = orjson.loads(reply.body) if reply.code is not None else {}
    return answer


def a_state(**kw: Any) -> SandboxState:
    return SandboxState(tokens=[TOKEN], clock=lambda: NOW, **kw)


def feed(state: page.FeedSource, **query: str) -> dict[str, Any]:
    return page.feed(state, {name: [value] for name, value in query.items()})


def shown(doc: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
    return [(row["event"], row["event_id"], row["status"]) for row in doc["events"]]


@pytest.mark.parametrize(
    ("user", "keys"),
    [
        ({}, []),
        ({"email": SHA, "phone": SHA, "external_id": SHA}, ["email", "phone", "external_id"]),
        ({"email": [SHA, SHA], "phone": []}, ["email"]),
        ({"email": "", "phone": [""], "ttp": "  "}, []),
        ({"ttclid": "E.C.P.x", "ttp": "2Xc"}, ["ttclid", "ttp"]),
        ({"ip": "203.0.113.7"}, []),
        ({"user_agent": "Mozilla/5.0"}, []),
        ({"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}, ["ip+ua"]),
        ({"email": 3, "locale": "en-US"}, []),
    ],
)
def test_match_keys_are_the_non_empty_identifiers_and_ip_counts_only_with_the_user_agent(
    user: dict[str, Any], keys: list[str]
) -> None:
    assert page.match_keys(user) == keys


def test_match_keys_of_something_that_is_not_a_user_object_are_none() -> None:
    assert page.match_keys(None) == []
    assert page.match_keys([SHA]) == []


def test_the_feed_lists_events_newest_first_with_their_request_and_match_keys() -> None:
    state = a_state()
    send(state, [an_event("a"), an_event("b", "Lead", ip="203.0.113.7", user_agent="UA")])
    send(state, [an_event("c", "ClickButton", ttclid="E.C.P")], test_event_code="TEST123")
    doc = feed(state)
    assert shown(doc) == [
        ("ClickButton", "c", "first_seen"),
        ("Lead", "b", "first_seen"),
        ("ViewContent", "a", "first_seen"),
    ]
    newest, lead, _ = doc["events"]
    assert newest["test_event_code"] == "TEST123"
    assert newest["match_keys"] == ["ttclid"]
    assert lead["match_keys"] == ["ip+ua"]
    assert lead["pixel"] == PIXEL
    assert lead["event_time"] == 1_767_225_000
    assert lead["received_at"] == NOW
    assert lead["code"] is None
    assert doc["reset"] is True
    assert doc["totals"] == {"received": 3, "accepted": 3, "duplicates": 0, "refused_requests": 0}
    assert doc["options"] == {
        "pixels": [PIXEL],
        "events": ["ClickButton", "Lead", "ViewContent"],
        "test_event_codes": ["TEST123"],
    }


def test_a_repeated_event_id_is_a_duplicate_listed_after_its_first() -> None:
    state = a_state()
    send(state, [an_event("a"), an_event("b")])
    send(state, [an_event("b"), an_event("c")])  # b again: TikTok keeps the first
    send(state, [an_event("d")])
    assert shown(feed(state)) == [
        ("ViewContent", "d", "first_seen"),
        ("ViewContent", "b", "duplicate"),
        ("ViewContent", "c", "first_seen"),
        ("ViewContent", "b", "first_seen"),
        ("ViewContent", "a", "first_seen"),
    ]
    assert feed(state)["totals"]["duplicates"] == 1


def test_a_refused_request_lists_its_events_with_tiktoks_code_and_message() -> None:
    state = a_state(faults="reject=bad-")
    send(state, [an_event("ok-1")])
    answer = send(state, [an_event("ok-2", "Lead"), an_event("bad-1", "Lead")])
    assert answer["code"] == 40002
    rows = feed(state)["events"]
    assert [(r["event_id"], r["status"]) for r in rows] == [
        ("bad-1", "rejected"),
        ("ok-2", "rejected"),
        ("ok-1", "first_seen"),
    ]
    assert rows[0]["code"] == 40002
    assert rows[0]["message"] == answer["message"]
    assert rows[0]["request_id"] == answer["request_id"]
    assert rows[0]["match_keys"] == ["email"]
    assert rows[0]["pixel"] == PIXEL
    assert feed(state)["totals"]["refused_requests"] == 1


def test_a_bad_token_an_http_fault_and_a_dropped_connection_are_refusals_too() -> None:
    state = a_state(faults="next=http503,next=drop")
    send(state, [an_event("h")])
    send(state, [an_event("d")])
    send(state, [an_event("t")], token="tok-unknown")
    send(state, [])  # not even an event: one row for the request
    rows = feed(state)["events"]
    assert [(r["event_id"], r["code"], r["http_status"]) for r in rows] == [
        (None, 40061, None),
        ("t", 40105, None),
        ("d", None, None),
        ("h", None, 503),
    ]
    assert rows[1]["message"] == "Access token is incorrect or has been revoked"
    assert rows[2]["message"].startswith("connection closed without an answer")
    assert rows[3]["message"] == "503 Service Unavailable"
    assert rows[0]["event"] is None


def test_a_body_that_is_not_json_is_one_rejected_row_without_an_event() -> None:
    state = a_state()
    state.track(TrackRequest(token=TOKEN.encode(), body=b"{not json"))
    (row,) = feed(state)["events"]
    assert (row["status"], row["code"], row["event"], row["pixel"]) == (
        "rejected",
        40000,
        None,
        None,
    )
    assert row["message"] == "Request body is not valid JSON"


def test_filters_narrow_events_duplicates_and_refusals_alike() -> None:
    state = a_state(faults="reject=bad-")
    send(state, [an_event("a"), an_event("b", "Lead")])
    send(state, [an_event("a"), an_event("c", "Lead")], pixel=OTHER_PIXEL)
    send(state, [an_event("a")])  # a duplicate on PIXEL
    send(state, [an_event("t", "Lead")], test_event_code="T1")
    send(state, [an_event("bad-1", "Lead")], pixel=OTHER_PIXEL)
    assert shown(feed(state, pixel=OTHER_PIXEL)) == [
        ("Lead", "bad-1", "rejected"),
        ("Lead", "c", "first_seen"),
        ("ViewContent", "a", "first_seen"),
    ]
    assert shown(feed(state, event="Lead")) == [
        ("Lead", "bad-1", "rejected"),
        ("Lead", "t", "first_seen"),
        ("Lead", "c", "first_seen"),
        ("Lead", "b", "first_seen"),
    ]
    assert shown(feed(state, test_event_code="T1")) == [("Lead", "t", "first_seen")]
    assert ("Lead", "t", "first_seen") not in shown(feed(state, scope="live"))
    assert shown(feed(state, scope="test")) == [("Lead", "t", "first_seen")]
    assert shown(feed(state, pixel=PIXEL, event="ViewContent")) == [
        ("ViewContent", "a", "duplicate"),
        ("ViewContent", "a", "first_seen"),
    ]


def test_the_cursor_brings_only_what_is_new_and_a_reset_starts_again() -> None:
    state = a_state(faults="reject=bad-")
    send(state, [an_event("a")])
    first = feed(state)
    assert feed(state, cursor=first["cursor"])["events"] == []
    send(state, [an_event("b"), an_event("a")])
    send(state, [an_event("bad-1")])
    later = feed(state, cursor=first["cursor"])
    assert later["reset"] is False
    assert shown(later) == [
        ("ViewContent", "bad-1", "rejected"),
        ("ViewContent", "a", "duplicate"),
        ("ViewContent", "b", "first_seen"),
    ]
    state.reset()
    send(state, [an_event("z")])
    again = feed(state, cursor=later["cursor"])
    assert again["reset"] is True
    assert shown(again) == [("ViewContent", "z", "first_seen")]


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"scope": "everything"},
        {"cursor": "1.2"},
        {"cursor": "a.b.c"},
        {"cursor": "1." + "9" * 40 + ".0"},
    ],
)
def test_a_bad_parameter_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"limit|scope|cursor"):
        feed(a_state(), **query)


def test_the_feed_holds_at_most_its_limit() -> None:
    state = a_state()
    for r in range(3):
        send(state, [an_event(f"{r}-{i}") for i in range(400)])
    doc = feed(state)
    assert len(doc["events"]) == page.FEED_LIMIT
    assert doc["events"][0]["event_id"] == "2-399"
    assert doc["events"][-1]["event_id"] == "1-300"
    assert len(feed(state, limit="10000")["events"]) == page.FEED_LIMIT
    assert [r["event_id"] for r in feed(state, limit="2")["events"]] == ["2-399", "2-398"]


class StoreSource:
    """A feed source over a bare store: what SandboxState.recent returns, without a lock."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def recent(self, **filters: Any) -> tuple[int, Recent, dict[str, Any]]:
        counts = self.store.to_json()
        counts["refused_requests"] = self.store.refused_requests
        return 0, self.store.recent(**filters), counts


def a_million_events() -> EventStore:
    """1000 requests of 1000 events, stored as the sandbox stores them (bodies kept whole).
    One decoded list serves every request: its pixel makes each request's keys new."""
    store = EventStore(max_documents=1_000_000, max_keys=1_000_000)
    data = [an_event(f"e-{i}") for i in range(1000)]
    body = orjson.dumps({"event_source": "web", "event_source_id": PIXEL, "data": data})
    for r in range(1000):
        store.add(
            data, pixel=f"P{r:04}", test_event_code=None, request_id=f"r{r}", now=NOW, body=body
        )
    return store


def test_a_sandbox_holding_a_million_events_answers_the_feed_quickly() -> None:
    store = a_million_events()
    assert store.to_json()["stored"]["documents"] == 1_000_000
    source = StoreSource(store)
    started = time.perf_counter()
    doc = feed(source)
    new = feed(source, cursor=doc["cursor"])
    elapsed = time.perf_counter() - started
    assert len(doc["events"]) == page.FEED_LIMIT
    assert doc["events"][0]["pixel"] == "P0999"
    assert new["events"] == []
    # One request body decoded (about a millisecond), not a thousand: generous for CI.
    assert elapsed < 0.5
    recent = store.recent(limit=page.FEED_LIMIT)
    assert len(recent.selections) == 1


def test_decoding_is_bounded_when_a_filter_matches_one_event_a_request() -> None:
    store = EventStore()
    for r in range(MAX_RECENT_BODIES + 10):
        data = [an_event(f"v-{r}-{i}") for i in range(5)] + [an_event(f"l-{r}", "Lead")]
        body = orjson.dumps({"event_source": "web", "event_source_id": PIXEL, "data": data})
        store.add(data, pixel=PIXEL, test_event_code=None, request_id=f"r{r}", now=NOW, body=body)
    doc = feed(StoreSource(store), event="Lead")
    assert len(doc["events"]) == MAX_RECENT_BODIES
    assert doc["truncated"] is True
    assert doc["events"][0]["event_id"] == f"l-{MAX_RECENT_BODIES + 9}"


def test_a_request_without_duplicates_notes_nothing() -> None:
    store = EventStore()
    store.add([an_event("a"), an_event("b")], pixel=PIXEL, test_event_code=None,
              request_id="r", now=NOW, body=b"{}")  # fmt: skip
    recent = store.recent()
    assert (recent.duplicates, recent.refusals, recent.notes) == ([], [], 0)


def test_refused_bodies_are_kept_within_their_byte_budget() -> None:
    store = EventStore()
    big = b" " * (MAX_REFUSED_BODY_BYTES // 2 + 1)
    for n in range(3):
        store.refused(request_id=f"r{n}", now=NOW, status=200, code=40002, reply=b"{}", body=big)
    store.refused(request_id="huge", now=NOW, status=200, code=40002, reply=b"{}",
                  body=big + big)  # fmt: skip
    refusals = store.recent().refusals
    assert [(n.request_id, n.body is None) for n in refusals] == [("huge", True), ("r2", False)]
    assert store.refused_requests == 4


def test_a_store_that_keeps_no_documents_notes_nothing() -> None:
    store = EventStore(max_documents=0)
    store.add([an_event("a"), an_event("a")], pixel=PIXEL, test_event_code=None,
              request_id="r", now=NOW)  # fmt: skip
    store.refused(request_id="r2", now=NOW, status=503, code=None, reply=b"", body=b"{}")
    recent = store.recent()
    assert (recent.duplicates, recent.refusals, store.refused_requests) == ([], [], 1)


# -- the page ------------------------------------------------------------------------------


def test_the_page_is_html_whose_policy_allows_only_its_own_script_and_style() -> None:
    reply = page.page_reply()
    assert reply.status == 200
    assert reply.content_type == "text/html; charset=utf-8"
    headers = dict(reply.headers)
    policy = headers["Content-Security-Policy"]
    html = reply.body
    for tag in (b"script", b"style"):
        blocks = re.findall(rb"<" + tag + rb">(.*?)</" + tag + rb">", html, re.DOTALL)
        assert len(blocks) == 1
        digest = base64.b64encode(hashlib.sha256(blocks[0]).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = page.page_reply().body.decode()
    assert html.startswith("<!doctype html>")
    assert not re.search(r"https?:", html)
    assert not re.search(r"""(src|href|action)\s*=\s*["']?//""", html)
    assert "@import" not in html
    assert "url(" not in html
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=(?![\"']data:)", html)
    # What the script asks for is the sandbox's own feed, by path.
    assert 'fetch("/sandbox/feed?' in html


def test_the_page_and_the_feed_are_served_over_http() -> None:
    with Sandbox(tokens=(TOKEN,)) as sandbox, httpx.Client(base_url=sandbox.url) as client:
        got = client.get("/")
        assert got.status_code == 200
        assert got.headers["content-type"] == "text/html; charset=utf-8"
        assert "<title>Test Events" in got.text
        body = {"event_source": "web", "event_source_id": PIXEL, "data": [an_event("a")]}
        sent = client.post(sandbox.endpoint, headers={"Access-Token": TOKEN}, json=body)
        assert sent.json()["code"] == 0
        doc = client.get(page.FEED_PATH, params={"limit": "10"}).json()
        assert [r["event_id"] for r in doc["events"]] == ["a"]
        bad = client.get(page.FEED_PATH, params={"limit": "x"})
        assert bad.status_code == 400
        assert "limit" in bad.json()["error"]


def test_the_duplicates_noted_are_bounded_like_the_documents() -> None:
    store = EventStore(max_documents=5)
    events = [an_event(f"e-{i}") for i in range(4)]
    for r in range(3):
        store.add(events, pixel=PIXEL, test_event_code=None, request_id=f"r{r}", now=NOW)
    (note,) = store.recent().duplicates
    assert (note.request_id, note.first_number, len(note.events)) == ("r2", 5, 4)
    assert [row["key"] for row in feed(StoreSource(store))["events"][:4]] == [
        "d8",
        "d7",
        "d6",
        "d5",
    ]


def test_refusals_past_the_decoding_bound_are_left_out_and_the_feed_says_so() -> None:
    state = a_state(faults="reject=bad-")
    send(state, [an_event("first")])
    for n in range(MAX_RECENT_BODIES + 6):
        send(state, [an_event(f"bad-{n}")])
    doc = feed(state)
    assert len(doc["events"]) == MAX_RECENT_BODIES
    assert doc["truncated"] is True
    assert doc["events"][0]["event_id"] == f"bad-{MAX_RECENT_BODIES + 5}"
    # What is older than the last refusal read is left out too: the list has no gap.
    assert "first" not in {row["event_id"] for row in doc["events"]}
