"""The TikTok sandbox over real HTTP on 127.0.0.1: what clients of TikTok's API see."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from processor.sandbox import TRACK_PATH, Sandbox, Token, main
from processor.schemas import SCHEMAS_DIR

PIXEL = "D34FV3JC77U1PDQ72P1G"
OTHER_PIXEL = "C9ZZZZ7777XXXXXXXXXX"
# Distinctive, so a leak anywhere is found by a plain substring search.
TOKEN = "tok-3c1f0e9a-never-log-me"
EXAMPLES = sorted((SCHEMAS_DIR / "tiktok/examples/event_track.v1.3").glob("*.json"))
#: The app id and event set ids of the examples of other event sources than web.
EXAMPLE_SOURCE_IDS = frozenset(orjson.loads(p.read_bytes())["event_source_id"] for p in EXAMPLES)
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
REPO = Path(__file__).resolve().parents[2]


def an_event(i: int = 0, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "ViewContent",
        "event_time": 1767225600 + i,
        "event_id": f"vc-{i}",
        "user": {"email": SHA, "ip": "203.0.113.7"},
        "properties": {"currency": "EUR", "value": 9.5, "contents": [{"content_id": f"sku-{i}"}]},
    }
    event.update(fields)
    return event


def a_body(events: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"event_source": "web", "event_source_id": PIXEL, "data": events, **top}


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def http_client(base_url: str, timeout: float = 10) -> httpx.Client:
    """An httpx client that skips rebuilding an SSL context (~90 ms each) it never uses."""
    return httpx.Client(base_url=base_url, timeout=timeout, verify=_tls())


def track(
    client: httpx.Client,
    body: Any,
    *,
    token: str | None = TOKEN,
    content_type: str = "application/json",
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Access-Token"] = token
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(TRACK_PATH, content=content, headers=headers)


def code_of(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    doc = response.json()
    assert set(doc) == {"code", "message", "request_id", "data"}
    return int(doc["code"])


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(tokens={TOKEN}, pixels={PIXEL, OTHER_PIXEL, *EXAMPLE_SOURCE_IDS}) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with http_client(sandbox.url, timeout=10) as c:
        yield c


# -- accepting -------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_request_is_accepted_and_stored_as_sent(
    sandbox: Sandbox, client: httpx.Client, path: Path
) -> None:
    body = orjson.loads(path.read_bytes())
    response = track(client, path.read_bytes())
    assert code_of(response) == 0
    assert response.json()["message"] == "OK"
    assert response.headers["X-Tt-Logid"] == response.json()["request_id"]
    stored = sandbox.events(event=body["data"][0]["event"])
    assert [s["event"] for s in stored] == body["data"]
    assert stored[0]["pixel"] == body["event_source_id"]
    assert stored[0]["event_source"] == body["event_source"]
    assert stored[0]["test_event_code"] == body.get("test_event_code")


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 4


def test_a_full_batch_of_1000_events_is_accepted(sandbox: Sandbox, client: httpx.Client) -> None:
    assert code_of(track(client, a_body([an_event(i) for i in range(1000)]))) == 0
    stats = sandbox.stats()
    assert stats["events"]["accepted"] == 1000
    assert stats["events"]["by_event"] == {"ViewContent": 1000}
    assert stats["events"]["by_pixel"] == {PIXEL: 1000}


# -- each error code by its cause ------------------------------------------------------


def _mutated(mutate: Any) -> dict[str, Any]:
    body = a_body([an_event(i) for i in range(5)])
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("body", "token", "code", "message"),
    [
        pytest.param(a_body([an_event()]), None, 40104, "empty", id="no-token"),
        pytest.param(a_body([an_event()]), "", 40104, "empty", id="blank-token"),
        pytest.param(a_body([an_event()]), "not-a-token", 40105, "incorrect", id="unknown-token"),
        pytest.param(
            a_body([an_event()], event_source_id="DDDDDDDDDDDDDDDDDDDD"),
            TOKEN,
            40001,
            "No permission to operate pixel code: DDDDDDDDDDDDDDDDDDDD",
            id="unknown-pixel",
        ),
        pytest.param(b"{not json", TOKEN, 40000, "not valid JSON", id="not-json"),
        pytest.param(b"[1, 2]", TOKEN, 40000, "JSON object", id="not-an-object"),
        pytest.param(
            a_body([an_event(i) for i in range(1001)]), TOKEN, 40061, "got 1001", id="1001-events"
        ),
        pytest.param(a_body([]), TOKEN, 40061, "got 0", id="no-events"),
        pytest.param(
            _mutated(lambda b: b["data"][2]["user"].update(email="Jane@Example.com")),
            TOKEN,
            40062,
            "data[2].user.email",
            id="raw-email",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][1]["user"].update(phone=[SHA, SHA.upper()])),
            TOKEN,
            40062,
            "data[1].user.phone[1]",
            id="uppercase-hash-in-list",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][4]["user"].update(external_id="user-1")),
            TOKEN,
            40062,
            "data[4].user.external_id",
            id="raw-external-id",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][3].update(event_id=12345)),
            TOKEN,
            40002,
            'Invalid value for data[3].event_id: not of type "string"',
            id="event-id-not-string",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][0].update(event_time=1767225600123)),
            TOKEN,
            40002,
            "Invalid value for data[0].event_time",
            id="event-time-in-ms",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][2]["properties"]["contents"][0].update(content_id=7)),
            TOKEN,
            40002,
            "data[2].properties.contents[0].content_id",
            id="content-id-not-string",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][1]["properties"].update(currency="XYZ")),
            TOKEN,
            40002,
            "data[1].properties.currency",
            id="unknown-currency",
        ),
        pytest.param(
            _mutated(lambda b: b["data"][0].pop("event")),
            TOKEN,
            40002,
            "data[0]",
            id="missing-event-name",
        ),
        pytest.param(
            _mutated(lambda b: b.pop("event_source")),
            TOKEN,
            40002,
            '"event_source" is a required property',
            id="missing-event-source",
        ),
    ],
)
def test_each_error_code_is_produced_by_its_cause_and_stores_nothing(
    sandbox: Sandbox,
    client: httpx.Client,
    *,
    body: Any,
    token: str | None,
    code: int,
    message: str,
) -> None:
    response = track(client, body, token=token)
    assert code_of(response) == code
    assert message in response.json()["message"]
    stats = sandbox.stats()
    assert stats["requests"]["by_code"] == {str(code): 1}
    assert stats["events"]["accepted"] == 0
    assert stats["stored"]["documents"] == 0


def test_an_expired_token_answers_40102() -> None:
    with (
        Sandbox(tokens=[Token(TOKEN, expired=True), "fresh"]) as sb,
        http_client(sb.url) as client,
    ):
        assert code_of(track(client, a_body([an_event()]))) == 40102
        assert code_of(track(client, a_body([an_event()]), token="fresh")) == 0


def test_a_token_limited_to_some_pixels_gets_40001_for_others() -> None:
    tokens = [Token(TOKEN, pixels=frozenset({OTHER_PIXEL}))]
    with Sandbox(tokens=tokens) as sb, http_client(sb.url) as client:
        response = track(client, a_body([an_event()]))
        assert code_of(response) == 40001
        assert PIXEL in response.json()["message"]
        assert code_of(track(client, a_body([an_event()], event_source_id=OTHER_PIXEL))) == 0


def test_without_a_pixel_list_any_well_formed_pixel_is_accepted() -> None:
    with Sandbox(tokens={TOKEN}) as sb, http_client(sb.url) as client:
        assert code_of(track(client, a_body([an_event()], event_source_id="ABCDEFGH12"))) == 0
        response = track(client, a_body([an_event()], event_source_id="bad pixel"))
        assert code_of(response) == 40002
        assert "event_source_id" in response.json()["message"]


def test_a_non_json_content_type_is_refused(client: httpx.Client) -> None:
    body = orjson.dumps(a_body([an_event()]))
    assert code_of(track(client, body, content_type="text/plain")) == 40000
    assert code_of(track(client, body, content_type="application/json; charset=utf-8")) == 0


def test_checks_run_in_tiktoks_order(client: httpx.Client) -> None:
    # A request wrong in every way is judged by the first check: the token.
    everything_wrong = a_body([an_event(event_id=1, user={"email": "raw"})] * 1001)
    everything_wrong["event_source_id"] = "DDDDDDDDDDDDDDDDDDDD"
    assert code_of(track(client, everything_wrong, token="wrong")) == 40105
    assert code_of(track(client, everything_wrong)) == 40001
    everything_wrong["event_source_id"] = PIXEL
    assert code_of(track(client, everything_wrong)) == 40061  # before looking at events
    del everything_wrong["data"][5:]
    assert code_of(track(client, everything_wrong)) == 40062  # PII before the schema
    everything_wrong["data"] = [an_event(event_id=1)]
    assert code_of(track(client, everything_wrong)) == 40002


def test_one_bad_event_rejects_the_batch_names_its_index_and_stores_nothing(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    events = [an_event(i) for i in range(10)]
    events[7]["event_id"] = 7
    response = track(client, a_body(events))
    assert code_of(response) == 40002
    assert "data[7].event_id" in response.json()["message"]
    assert "7 is" not in response.json()["message"]  # the value is masked
    stats = sandbox.stats()
    assert (stats["events"]["received"], stats["events"]["rejected"]) == (10, 10)
    assert stats["events"]["accepted"] == 0
    assert sandbox.events() == []


# -- storage ---------------------------------------------------------------------------


def test_dedup_keeps_the_first_of_each_pixel_event_and_event_id(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    first = a_body([an_event(1, properties={"value": 1}), an_event(2)])
    assert code_of(track(client, first)) == 0
    again = a_body([an_event(1, properties={"value": 2}), an_event(2), an_event(3)])
    assert code_of(track(client, again)) == 0  # duplicates are not an error
    other_keys = [
        a_body([an_event(1)], event_source_id=OTHER_PIXEL),  # another pixel
        a_body([an_event(1, event="AddToCart")]),  # another event name
    ]
    for body in other_keys:
        assert code_of(track(client, body)) == 0
    no_id = an_event(9)
    del no_id["event_id"]
    assert code_of(track(client, a_body([no_id, no_id]))) == 0  # always stored

    stats = sandbox.stats()["events"]
    assert (stats["received"], stats["accepted"], stats["duplicates"]) == (9, 7, 2)
    assert stats["by_event"] == {"ViewContent": 6, "AddToCart": 1}
    assert stats["by_pixel"] == {PIXEL: 6, OTHER_PIXEL: 1}
    kept = sandbox.events(event="ViewContent", pixel=PIXEL, event_id="vc-1")
    assert [k["event"]["properties"] for k in kept] == [{"value": 1}]  # the first one


def test_test_events_are_counted_and_deduplicated_apart(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    assert code_of(track(client, a_body([an_event(1)]))) == 0
    for _ in range(2):
        assert code_of(track(client, a_body([an_event(1)], test_event_code="TEST1"))) == 0
    assert code_of(track(client, a_body([an_event(1), an_event(2)], test_event_code="TEST2"))) == 0

    stats = sandbox.stats()
    assert stats["events"]["accepted"] == 1
    assert stats["events"]["received"] == 1
    assert stats["test_events"]["accepted"] == 3
    assert stats["test_events"]["duplicates"] == 1
    assert stats["test_events"]["by_test_code"] == {
        "TEST1": {"accepted": 1, "duplicates": 1},
        "TEST2": {"accepted": 2, "duplicates": 0},
    }
    assert len(sandbox.events(scope="live")) == 1
    assert len(sandbox.events(scope="test")) == 3
    assert len(sandbox.events(test_event_code="TEST2")) == 2


def test_documents_are_capped_but_counts_stay_exact() -> None:
    with Sandbox(tokens={TOKEN}, max_stored_events=5) as sb, http_client(sb.url) as c:
        for batch in range(4):
            assert code_of(track(c, a_body([an_event(batch * 10 + i) for i in range(10)]))) == 0
        stats = sb.stats()
        assert stats["events"]["accepted"] == 40
        assert stats["stored"]["documents"] == 5
        assert [e["event"]["event_id"] for e in sb.events()] == [f"vc-{i}" for i in range(35, 40)]


def test_events_endpoint_filters_and_limits(sandbox: Sandbox, client: httpx.Client) -> None:
    track(client, a_body([an_event(i) for i in range(5)] + [an_event(9, event="Purchase")]))
    doc = client.get("/sandbox/events", params={"event": "ViewContent", "limit": 2}).json()
    assert doc["count"] == 2
    assert [e["event"]["event_id"] for e in doc["events"]] == ["vc-3", "vc-4"]
    only = client.get("/sandbox/events", params={"event": "Purchase", "pixel": PIXEL}).json()
    assert [e["event"]["event_id"] for e in only["events"]] == ["vc-9"]
    assert client.get("/sandbox/events", params={"scope": "nope"}).status_code == 400


def test_reset_forgets_events_and_counts_but_keeps_tokens(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    track(client, a_body([an_event(1)]))
    assert client.post("/sandbox/reset").json() == {"reset": True}
    stats = sandbox.stats()
    assert stats["requests"]["total"] == 0
    assert stats["events"]["accepted"] == 0
    assert code_of(track(client, a_body([an_event(1)]))) == 0  # dedup memory is gone too
    assert sandbox.stats()["events"]["accepted"] == 1


# -- secrets ---------------------------------------------------------------------------


def test_the_token_never_appears_in_stats_events_logs_or_answers(
    sandbox: Sandbox, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    rotated = TOKEN + "-2"
    sandbox.set_faults("next=40100")
    for token in (TOKEN, TOKEN, "x" + TOKEN, None):
        seen.append(track(client, a_body([an_event(1)]), token=token).text)
    seen.append(track(client, b"nonsense").text)
    seen.append(client.post("/sandbox/tokens", json={"tokens": [rotated, TOKEN]}).text)
    seen.append(client.post("/sandbox/tokens", json={"tokens": [{"token": rotated, "x": 1}]}).text)
    seen.append(client.post("/sandbox/tokens", json={"tokens": [rotated, TOKEN + "x"]}).text)
    seen.append(track(client, a_body([an_event(2)]), token=rotated).text)
    seen.append(client.get("/sandbox/tokens").text)
    for path in ("/sandbox/stats", "/sandbox/events", "/sandbox/faults", "/healthz"):
        seen.append(client.get(path).text)
    seen += [repr(Token(TOKEN)), str(sandbox.stats()), str(sandbox.events()), str(sandbox.tokens())]

    assert sandbox.stats()["events"]["accepted"] == 2
    assert caplog.records, "the sandbox logs its requests at DEBUG"
    everything = "\n".join([*seen, caplog.text])
    assert TOKEN not in everything
    assert sandbox.stats()["requests"]["by_token"] == {"token-1": 2, "token-2": 1}


# -- faults ----------------------------------------------------------------------------


def test_fail_next_n_answers_each_queued_outcome_in_order(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults("next=40100*2,next=50002,next=http503,next=http429,retry_after=3")
    answers = []
    for i in range(6):
        response = track(client, a_body([an_event(i)]))
        answers.append(response.status_code if response.status_code != 200 else code_of(response))
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "3"
    assert answers == [40100, 40100, 50002, 503, 429, 0]
    stats = sandbox.stats()
    assert stats["faults"]["codes"] == {"40100": 2, "50002": 1}
    assert stats["faults"]["http"] == {"503": 1, "429": 1}
    assert stats["requests"]["by_status"] == {"200": 4, "503": 1, "429": 1}
    assert stats["events"]["accepted"] == 1  # faulted requests store nothing
    assert sandbox.faults()["next_remaining"] == []


@pytest.mark.parametrize(
    "code", [40000, 40002, 40100, 40132, 50000, 50002, 51000, 51234, 60001, 61000]
)
def test_any_tiktok_error_code_can_be_injected(
    sandbox: Sandbox, client: httpx.Client, code: int
) -> None:
    sandbox.set_faults(f"next={code}")
    assert code_of(track(client, a_body([an_event()]))) == code
    assert code_of(track(client, a_body([an_event()]))) == 0


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_each_http_fault_status_can_be_injected(
    sandbox: Sandbox, client: httpx.Client, status: int
) -> None:
    sandbox.set_faults(f"next=http{status}")
    response = track(client, a_body([an_event()]))
    assert response.status_code == status
    assert response.headers["Content-Type"] == "text/plain"
    assert ("Retry-After" in response.headers) == (status == 429)


def test_a_dropped_connection_gives_no_answer_and_the_next_request_works(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults("next=drop*2")
    for _ in range(2):
        with pytest.raises(httpx.TransportError):
            track(client, a_body([an_event()]))
    assert code_of(track(client, a_body([an_event()]))) == 0
    stats = sandbox.stats()
    assert stats["requests"]["dropped"] == 2
    assert stats["faults"]["dropped"] == 2
    assert stats["requests"]["total"] == 3


def test_partial_ok_can_be_injected_and_still_stores(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults("next=20001")
    assert code_of(track(client, a_body([an_event()]))) == 20001
    assert sandbox.stats()["events"]["accepted"] == 1


def test_seeded_rates_repeat_exactly_and_match_their_fractions() -> None:
    spec = "code=50000:0.3,http=502:0.2,drop=0.1,seed=11"

    def run() -> list[str]:
        outcomes = []
        with Sandbox(tokens={TOKEN}, faults=spec) as sb, http_client(sb.url) as c:
            for i in range(200):
                try:
                    response = track(c, a_body([an_event(i)]))
                except httpx.TransportError:
                    outcomes.append("drop")
                    continue
                ok = response.status_code == 200
                outcomes.append(str(code_of(response)) if ok else f"http{response.status_code}")
        return outcomes

    first = run()
    assert first == run()
    counts = {o: first.count(o) for o in set(first)}
    assert set(counts) == {"0", "50000", "http502", "drop"}
    assert 40 <= counts["50000"] <= 80
    assert 20 <= counts["http502"] <= 60
    assert 5 <= counts["drop"] <= 35


def test_latency_delays_every_answer(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("latency=150ms,jitter=50ms")
    started = time.monotonic()
    for i in range(3):
        assert code_of(track(client, a_body([an_event(i)]))) == 0
    assert time.monotonic() - started >= 0.45


def test_the_rate_limit_answers_40100(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults({"rps": 0.2, "burst": 2})
    codes = [code_of(track(client, a_body([an_event(i)]))) for i in range(5)]
    assert codes == [0, 0, 40100, 40100, 40100]
    assert sandbox.stats()["faults"]["rate_limited"] == 3


def test_a_token_that_stops_working_after_n_requests_until_tokens_change(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults("token_after=3:40102")
    codes = [code_of(track(client, a_body([an_event(i)]))) for i in range(5)]
    assert codes == [0, 0, 0, 40102, 40102]
    assert sandbox.stats()["faults"]["token_faults"] == 1

    response = client.post("/sandbox/tokens", json={"tokens": ["rotated-token"]})
    assert response.status_code == 200
    assert code_of(track(client, a_body([an_event(8)]), token="rotated-token")) == 0
    assert code_of(track(client, a_body([an_event(9)]))) == 40105  # the old one is gone


def test_a_revoked_token_fault_answers_40105(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_faults("token_after=0")
    assert code_of(track(client, a_body([an_event()]))) == 40105
    sandbox.set_tokens([TOKEN])
    assert code_of(track(client, a_body([an_event()]))) == 0


def test_tokens_rotate_at_run_time(sandbox: Sandbox, client: httpx.Client) -> None:
    rotation = {"tokens": [{"token": TOKEN, "expired": True}, {"token": "new", "label": "next"}]}
    doc = client.post("/sandbox/tokens", json=rotation).json()
    assert doc == {
        "tokens": [
            {"label": "token-1", "expired": True, "pixels": None},
            {"label": "next", "expired": False, "pixels": None},
        ]
    }
    assert code_of(track(client, a_body([an_event(1)]))) == 40102
    assert code_of(track(client, a_body([an_event(1)]), token="new")) == 0
    merged = client.post("/sandbox/tokens", json={"tokens": ["third"], "merge": True}).json()
    assert [t["label"] for t in merged["tokens"]] == ["token-1", "next", "token-3"]
    bad = client.post("/sandbox/tokens", json={"tokens": [{"token": ""}]})
    assert bad.status_code == 400
    assert bad.json()["problems"] == ["tokens[0].token: must be a non-empty string"]


def test_faults_are_read_and_replaced_over_http(sandbox: Sandbox, client: httpx.Client) -> None:
    spec = "latency=5ms,code=40100:0.05,http=503:2%,drop=0.01,next=drop*2,rps=100,seed=7"
    doc = client.post("/sandbox/faults", json={"spec": spec}).json()
    assert doc["spec"] == (
        "latency=5ms,code=40100:0.05,http=503:0.02,drop=0.01,next=drop*2,rps=100,seed=7"
    )
    assert doc["next_remaining"] == ["drop*2"]
    assert client.get("/sandbox/faults").json() == doc
    as_json = client.post("/sandbox/faults", json=doc["faults"]).json()
    assert as_json["spec"] == doc["spec"]
    cleared = client.post("/sandbox/faults", json={}).json()
    assert cleared["spec"] == ""
    assert code_of(track(client, a_body([an_event()]))) == 0


def test_a_bad_fault_spec_is_refused_with_every_problem(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    response = client.post(
        "/sandbox/faults", json={"spec": "latency=fast,code=40100:2,http=418:0.1,wat=1"}
    )
    assert response.status_code == 400
    problems = "\n".join(response.json()["problems"])
    assert "'latency=fast': 'fast' is not a duration" in problems
    assert "'wat=1': unknown fault" in problems
    assert "code 40100: rate must be between 0 and 1, got 2" in problems
    assert "HTTP status 418 cannot be injected" in problems
    assert sandbox.faults()["spec"] == ""  # the old configuration stays


# -- HTTP and concurrency --------------------------------------------------------------


def test_concurrent_clients_do_not_corrupt_counts(sandbox: Sandbox) -> None:
    threads, requests, per_request = 8, 40, 5
    errors: list[BaseException] = []

    def client_thread(n: int) -> None:
        try:
            with http_client(sandbox.url, timeout=30) as c:
                for r in range(requests):
                    unique = [an_event(n * 10_000 + r * 10 + i) for i in range(per_request)]
                    shared = an_event(999_999)  # every thread sends this one: one is kept
                    assert code_of(track(c, a_body([*unique, shared]))) == 0
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=client_thread, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    stats = sandbox.stats()
    total = threads * requests
    assert stats["requests"]["total"] == total
    assert stats["requests"]["by_code"] == {"0": total}
    assert stats["events"]["received"] == total * (per_request + 1)
    assert stats["events"]["accepted"] == total * per_request + 1
    assert stats["events"]["duplicates"] == total - 1


def test_keep_alive_serves_several_requests_on_one_connection(sandbox: Sandbox) -> None:
    payload = orjson.dumps(a_body([an_event()]))
    request = (
        f"POST {TRACK_PATH} HTTP/1.1\r\nHost: x\r\nAccess-Token: {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((sandbox.host, sandbox.port), timeout=5) as sock:
        answers = b""
        for _ in range(3):
            sock.sendall(request)
            while answers.count(b'"request_id"') < _ + 1:
                answers += sock.recv(65536)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    assert sandbox.stats()["requests"]["total"] == 3


def test_a_chunked_body_is_read(client: httpx.Client) -> None:
    payload = orjson.dumps(a_body([an_event()]))
    chunks = (payload[i : i + 50] for i in range(0, len(payload), 50))
    response = client.post(
        TRACK_PATH,
        content=chunks,
        headers={"Access-Token": TOKEN, "Content-Type": "application/json"},
    )
    assert code_of(response) == 0


def test_an_oversized_body_gets_413() -> None:
    with Sandbox(tokens={TOKEN}, max_body_bytes=1000) as sb, http_client(sb.url) as c:
        response = track(c, a_body([an_event(i) for i in range(20)]))
        assert response.status_code == 413


def test_health_and_unknown_routes(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/nope").status_code == 404
    assert client.post("/nope").status_code == 404
    wrong_method = client.get(TRACK_PATH)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"


def test_close_ends_idle_keep_alive_connections() -> None:
    sb = Sandbox(tokens={TOKEN}).start()
    with http_client(sb.url) as c:
        assert code_of(track(c, a_body([an_event()]))) == 0
        started = time.monotonic()
        sb.close()
        assert time.monotonic() - started < 3
        with pytest.raises(httpx.TransportError):
            track(c, a_body([an_event()]))


def test_wait_until_returns_when_the_condition_holds(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    timer = threading.Timer(0.2, lambda: track(client, a_body([an_event()])))
    timer.start()
    stats = sandbox.wait_until(lambda s: s["events"]["accepted"] == 1, timeout=5)
    timer.join()
    assert stats["events"]["accepted"] == 1
    with pytest.raises(TimeoutError):
        sandbox.wait_until(lambda s: s["events"]["accepted"] == 2, timeout=0.2)


# -- the command line ------------------------------------------------------------------


def test_cli_serves_prints_its_url_and_stops_cleanly_on_sigterm() -> None:
    env = {**os.environ, "TIKTOK_SANDBOX_TOKEN": TOKEN}
    command = [sys.executable, "-m", "processor.sandbox", "--port", "0", "--pixel", PIXEL]
    command += ["--faults", "next=40100,seed=3", "--log-level", "debug"]
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"listening on (http://\S+) ", line)
            assert match, line
            with http_client(match.group(1)) as c:
                assert code_of(track(c, a_body([an_event()]))) == 40100
                assert code_of(track(c, a_body([an_event()]))) == 0
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, stderr
    assert TOKEN not in stderr
    assert "track request_id=" in stderr


def test_cli_rejects_a_bad_fault_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--faults", "drop=2,jitter=1h"]) == 2
    err = capsys.readouterr().err
    assert "jitter=1h" in err
    assert "drop" in err


def test_cli_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with Sandbox() as taken:
        assert main(["--port", str(taken.port)]) == 1
    assert "cannot listen" in capsys.readouterr().err


def test_reject_fault_refuses_the_batch_naming_the_event_and_stores_nothing(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_faults("reject=bad-")
    body = a_body([an_event(0), an_event(1, event_id="bad-1"), an_event(2)])
    response = track(client, body)
    assert code_of(response) == 40002
    assert response.json()["message"].startswith("Invalid value for data[1].event_id")
    assert sandbox.stats()["events"]["accepted"] == 0
    assert code_of(track(client, a_body([an_event(0), an_event(2)]))) == 0
    assert sandbox.faults()["spec"] == "reject=bad-"


# -- hostile clients (more cases, as raw bytes, in tests/hostile/http/) -------------------


def _answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The status line and body of one answer that carries a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length_field = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert length_field is not None, head
    length = int(length_field.group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n", 1)[0], body


def test_a_chunked_event_with_extensions_and_trailers_is_stored_as_sent(
    sandbox: Sandbox,
) -> None:
    event = an_event(7)
    payload = orjson.dumps(a_body([event]))
    chunks = b"".join(
        b"%x;part=%d\r\n%s\r\n" % (len(piece), n, piece)
        for n, piece in enumerate(payload[i : i + 50] for i in range(0, len(payload), 50))
    )
    request = (
        (
            f"POST {TRACK_PATH} HTTP/1.1\r\nHost: x\r\nAccess-Token: {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + chunks
        + b"0\r\nX-Checksum: none\r\n\r\n"
    )
    with socket.create_connection((sandbox.host, sandbox.port), timeout=10) as sock:
        sock.sendall(request)
        status, body = _answer(sock)
    assert status == b"HTTP/1.1 200 OK"
    assert orjson.loads(body)["code"] == 0
    (stored,) = sandbox.events(event_id="vc-7")
    assert stored["event"] == event


@pytest.mark.timeout(60)
def test_connections_past_the_bound_get_503_at_once_and_a_freed_slot_is_reused() -> None:
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with Sandbox(tokens={TOKEN}, max_connections=2) as sb, contextlib.ExitStack() as stack:
        held = [
            stack.enter_context(socket.create_connection((sb.host, sb.port), timeout=10))
            for _ in range(2)
        ]
        for sock in held:  # both served and kept alive, each holding its thread
            sock.sendall(health)
            assert _answer(sock)[0] == b"HTTP/1.1 200 OK"
        with socket.create_connection((sb.host, sb.port), timeout=10) as third:
            status, body = _answer(third)
            assert third.recv(1) == b""  # and closed
        assert status == b"HTTP/1.1 503 Service Unavailable"
        assert orjson.loads(body) == {"error": "too many connections"}
        held[0].close()
        # The slot frees once the server has seen the close; until then the answer is 503
        # (or, the 503 having closed a connection with our request unread, a reset).
        while _health_status(sb) != b"HTTP/1.1 200 OK":
            time.sleep(0.01)


def _health_status(sb: Sandbox) -> bytes | None:
    with socket.create_connection((sb.host, sb.port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return _answer(sock)[0]
        except ConnectionError:
            return None


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections must be positive"):
        Sandbox(max_connections=0)
