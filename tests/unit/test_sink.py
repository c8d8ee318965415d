"""The TikTok sink against httpx.MockTransport: classification, retries, bisection, halting,
limits, closing, and the exactly-once property. No network, no real waiting for backoff."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from processor.batching import Batch, PendingEvent
from processor.config import AccessToken, DeliveryConfig, Secret, TikTokConfig
from processor.errors import ConfigError, FatalSinkError, PermanentSinkError, RetryableSinkError
from processor.mapping import MappedEvent
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sink import (
    BatchOutcome,
    RateLimiter,
    RetryReason,
    Sender,
    Verdict,
    backoff_delay,
    classify,
)

PIXEL = "D34FV3JC77U1PDQ72P1G"
ENDPOINT = "https://tiktok.test/open_api/v1.3/event/track/"
# Distinctive, so a leak anywhere is found by a plain substring search.
TOKEN = "tok-5be1c0de-never-log-me"
NEW_TOKEN = "tok-77aa00ff-rotated-never-log-me"
WAIT_S = 60.0  # generous: the machine is shared and slow; tests never wait this long when green

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


# -- building blocks ----------------------------------------------------------------------


def pending(i: int, *, bad: bool = False, event: str = "ViewContent") -> PendingEvent:
    payload: dict[str, Any] = {"event": event, "event_time": 1767225600, "event_id": f"e-{i}"}
    if bad:
        payload["bad"] = True  # the fake TikTok rejects requests carrying such an event
    return PendingEvent(i, MappedEvent("views", PIXEL, None, payload))


def a_batch(refs: range | list[int], *, bad: frozenset[int] = frozenset()) -> Batch:
    return Batch(BatchKey(PIXEL, None), [pending(i, bad=i in bad) for i in refs])


def tiktok(
    token: str | None = TOKEN, *, file: Path | None = None, partner: str | None = None
) -> TikTokConfig:
    secret = Secret(token) if token else None
    return TikTokConfig(
        PIXEL,
        AccessToken("TIKTOK_ACCESS_TOKEN", secret, file),
        endpoint=ENDPOINT,
        partner_name=partner,
    )


def delivery(**overrides: Any) -> DeliveryConfig:
    settings_: dict[str, Any] = {
        "max_in_flight": 4,
        "max_requests_per_s": 10_000.0,
        "max_retries": 3,
        "backoff_initial_ms": 1,
        "backoff_max_ms": 30_000,
        "request_timeout_s": 5.0,
    }
    settings_.update(overrides)
    return DeliveryConfig(**settings_)


def envelope(code: int, message: str = "", status: int = 200, **headers: str) -> httpx.Response:
    body = {"code": code, "message": message or ("OK" if code == 0 else "Error"), "data": {}}
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def sent_events(request: httpx.Request) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = orjson.loads(request.content)["data"]
    return events


def sent_refs(request: httpx.Request) -> list[int]:
    return [int(e["event_id"].removeprefix("e-")) for e in sent_events(request)]


class SleepRecorder:
    """An injected sleep that records each delay and returns at once (just yielding)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class VirtualTime:
    """A fake clock and sleep for the sender's loop. Sleepers wake in deadline order, and
    the clock jumps to the next deadline only after every runnable task has had many
    turns, so what happens "at" a virtual instant happens before time moves on."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), wake))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await wake

    async def _drive(self) -> None:
        while self._sleepers:
            for _ in range(50):
                await asyncio.sleep(0)
            deadline, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                self.now = max(self.now, deadline)
                wake.set_result(None)


@contextmanager
def running(
    handler: Handler,
    *,
    config: TikTokConfig | None = None,
    metrics: Metrics | None = None,
    close_timeout: float = 5.0,
    **options: Any,
) -> Iterator[Sender]:
    """A started sender whose requests go to ``handler``; closed afterwards.
    ``options``: delivery overrides, or Sender keyword arguments."""
    sender_keys = {"sleep", "clock", "rng", "token_check_interval_s", "rate_burst", "on_completion"}
    sender_options = {k: v for k, v in options.items() if k in sender_keys}
    sender_options.setdefault("sleep", SleepRecorder())
    sender_options.setdefault("rng", random.Random(1))
    delivery_options = {k: v for k, v in options.items() if k not in sender_keys}
    sender = Sender(
        config or tiktok(),
        delivery(**delivery_options),
        metrics or Metrics(),
        transport=httpx.MockTransport(handler),
        **sender_options,
    )
    sender.start()
    try:
        yield sender
    finally:
        sender.close(close_timeout)


def outcomes(sender: Sender, count: int, timeout: float = WAIT_S) -> list[BatchOutcome]:
    """Wait for ``count`` outcomes (fails the test after ``timeout``)."""
    done: list[BatchOutcome] = []
    deadline = time.monotonic() + timeout
    while len(done) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"only {len(done)} of {count} batches completed in {timeout}s")
        sender.wait(min(left, 0.5))
        done += sender.poll_completions()
    return done


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.005)


def accepted_refs(done: list[BatchOutcome]) -> list[int]:
    return sorted(int(p.ref) for o in done for p in o.accepted)


def rejected_refs(done: list[BatchOutcome]) -> list[int]:
    return sorted(int(p.ref) for o in done for p, _ in o.rejected)


def ok(_request: httpx.Request) -> httpx.Response:
    return envelope(0)


# -- classification: the table of DESIGN §3.6 -----------------------------------------------

R = Verdict.RETRYABLE
BAD = Verdict.BAD_PAYLOAD
FATAL = Verdict.FATAL


@pytest.mark.parametrize(
    ("code", "verdict", "reason"),
    [
        (0, Verdict.SUCCESS, None),
        (20001, Verdict.PARTIAL, None),
        (40100, R, RetryReason.RATE_LIMITED),
        (40132, R, RetryReason.RATE_LIMITED),
        (50000, R, RetryReason.SERVER),
        (50002, R, RetryReason.SERVER),
        (51000, R, RetryReason.SERVER),
        (51234, R, RetryReason.SERVER),
        (60001, R, RetryReason.SERVER),
        (61000, R, RetryReason.SERVER),
        (40000, BAD, None),
        (40002, BAD, None),
        (40061, BAD, None),
        (40062, BAD, None),
        (40999, BAD, None),  # an unknown 4xxxx: the request is wrong
        (40001, FATAL, None),
        (40102, FATAL, None),
        (40104, FATAL, None),
        (40105, FATAL, None),
        (12345, R, RetryReason.SERVER),  # no known family: retried, bounded
    ],
)
def test_every_tiktok_code_is_classified_from_the_body_of_a_200(
    code: int, verdict: Verdict, reason: RetryReason | None
) -> None:
    body = orjson.dumps({"code": code, "message": "Some message", "request_id": "r1"})
    result = classify(200, body, None)
    assert result.verdict is verdict
    assert result.retry_reason is reason
    assert result.tiktok_code == code
    assert result.reason == f"{code} Some message"
    assert result.code in (str(code), "other")


@pytest.mark.parametrize(
    ("status", "verdict", "reason", "label"),
    [
        (408, R, RetryReason.TIMEOUT, "http_408"),
        (429, R, RetryReason.HTTP_429, "http_429"),
        (500, R, RetryReason.HTTP_5XX, "http_500"),
        (502, R, RetryReason.HTTP_5XX, "http_502"),
        (503, R, RetryReason.HTTP_5XX, "http_503"),
        (504, R, RetryReason.HTTP_5XX, "http_504"),
        (400, BAD, None, "http_400"),
        (413, BAD, None, "http_413"),
        (422, BAD, None, "http_422"),
        (401, FATAL, None, "http_401"),
        (403, FATAL, None, "http_403"),
        (404, FATAL, None, "http_404"),
        (405, FATAL, None, "http_405"),
        (301, FATAL, None, "http_301"),
    ],
)
def test_http_statuses_without_an_envelope_are_classified_by_status(
    status: int, verdict: Verdict, reason: RetryReason | None, label: str
) -> None:
    result = classify(status, b"<html>gateway says no</html>", None)
    assert (result.verdict, result.retry_reason, result.code) == (verdict, reason, label)
    assert result.status == status
    assert "gateway" not in result.reason


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'{"message": "no code"}', b'{"code": "0"}', b'{"code": true}'],
)
@pytest.mark.parametrize("status", [200, 204])
def test_a_2xx_without_the_envelope_is_retryable_invalid_body(status: int, body: bytes) -> None:
    result = classify(status, body, None)
    assert (result.verdict, result.retry_reason, result.code) == (
        R,
        RetryReason.INVALID_BODY,
        "invalid_body",
    )


def test_the_body_code_wins_over_an_error_status() -> None:
    body = orjson.dumps({"code": 40002, "message": "Invalid value for data[3].event_id"})
    assert classify(503, body, None).verdict is BAD
    # ... but an envelope saying 0 does not turn a 503 into a success.
    assert classify(503, orjson.dumps({"code": 0}), None).verdict is R


@pytest.mark.parametrize(
    ("exc", "verdict", "label"),
    [
        (httpx.ConnectTimeout("t"), R, "timeout"),
        (httpx.ReadTimeout("t"), R, "timeout"),
        (httpx.WriteTimeout("t"), R, "timeout"),
        (httpx.PoolTimeout("t"), R, "timeout"),
        (TimeoutError(), R, "timeout"),
        (httpx.ConnectError("refused"), R, "network"),
        (httpx.ReadError("reset"), R, "network"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            R,
            "network",
        ),
        (ConnectionResetError(), R, "network"),
        (httpx.DecodingError("bad gzip"), R, "invalid_body"),
        (httpx.UnsupportedProtocol("ftp"), FATAL, "network"),
    ],
)
def test_transport_exceptions_are_classified(exc: Exception, verdict: Verdict, label: str) -> None:
    result = classify(None, None, exc)
    assert (result.verdict, result.code) == (verdict, label)
    assert type(exc).__name__ in result.reason


def test_exception_messages_are_never_copied_into_the_reason() -> None:
    # HTTP libraries quote header values in some errors: the token must not ride along.
    result = classify(None, None, httpx.LocalProtocolError(f"Illegal header value {TOKEN!r}"))
    assert TOKEN not in result.reason
    assert result.verdict is R


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1.5", 1.5), (" 2 ", 2.0), ("-1", None), ("soon", None), ("nan", None)],
)
def test_retry_after_seconds_are_read_from_429_and_503(header: str, expected: float | None) -> None:
    assert classify(429, b"", None, retry_after=header).retry_after == expected
    assert classify(503, b"", None, retry_after=header).retry_after == expected
    assert classify(400, b"", None, retry_after=header).retry_after is None


def test_classifications_give_the_processors_own_errors() -> None:
    retry = classify(429, b"", None, retry_after="3").error()
    assert isinstance(retry, RetryableSinkError)
    assert (retry.status, retry.retry_after) == (429, 3.0)
    bad = classify(200, orjson.dumps({"code": 40002, "message": "m"}), None).error()
    assert isinstance(bad, PermanentSinkError)
    assert bad.code == 40002
    fatal = classify(200, orjson.dumps({"code": 40105, "message": "m"}), None).error()
    assert isinstance(fatal, FatalSinkError)
    assert classify(200, orjson.dumps({"code": 0}), None).error() is None


def test_unknown_codes_do_not_grow_the_code_label_set() -> None:
    assert classify(200, orjson.dumps({"code": 47474}), None).code == "other"
    assert classify(200, orjson.dumps({"code": 51007}), None).code == "51007"


def test_a_bad_payload_reason_names_the_event_index() -> None:
    body = orjson.dumps({"code": 40002, "message": "Invalid value for data[12].event_id: x"})
    assert classify(200, body, None).event_index() == 12
    assert (
        classify(200, orjson.dumps({"code": 40002, "message": "bad"}), None).event_index() is None
    )


# -- pacing --------------------------------------------------------------------------------


@given(
    retry=st.integers(0, 200),
    retry_after=st.none() | st.floats(0, 1000),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_full_jitter_with_retry_after_as_floor_and_a_cap(
    retry: int, retry_after: float | None, seed: int
) -> None:
    delay = backoff_delay(
        retry, initial_s=0.2, max_s=30.0, retry_after=retry_after, rng=random.Random(seed)
    )
    assert 0 <= delay <= 30.0
    assert delay <= max(min(30.0, 0.2 * 2.0**retry), retry_after or 0)
    if retry_after is not None:
        assert delay >= min(retry_after, 30.0)


def test_backoff_jitter_covers_the_whole_range() -> None:
    rng = random.Random(5)
    delays = [
        backoff_delay(3, initial_s=1.0, max_s=100.0, retry_after=None, rng=rng) for _ in range(500)
    ]
    assert min(delays) < 1.0
    assert max(delays) > 7.0
    assert max(delays) <= 8.0


def test_the_rate_limiter_spaces_requests_on_a_fake_clock() -> None:
    now = [100.0]

    async def sleep(delay: float) -> None:
        now[0] += delay

    limiter = RateLimiter(5.0, burst=2, clock=lambda: now[0], sleep=sleep)

    async def grants() -> list[float]:
        times = []
        for _ in range(12):
            await limiter.acquire()
            times.append(now[0])
        return times

    times = asyncio.run(grants())
    assert times[:2] == [100.0, 100.0]  # the burst
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(gap == pytest.approx(0.2) for gap in gaps)


def test_the_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0, clock=time.monotonic, sleep=asyncio.sleep)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1, burst=0, clock=time.monotonic, sleep=asyncio.sleep)


# -- the request ----------------------------------------------------------------------------


def test_a_batch_is_posted_as_tiktok_expects_and_accepted() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return envelope(0)

    metrics = Metrics()
    batch = Batch(BatchKey(PIXEL, "TEST123"), [pending(i) for i in range(3)])
    with running(handler, config=tiktok(partner="AcmeRelay"), metrics=metrics) as sender:
        sender.submit(batch)
        [done] = outcomes(sender, 1)
    assert done.batch is batch
    assert done.accepted == batch.items
    assert (done.rejected, done.partial) == ([], False)
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == ENDPOINT
    assert request.headers["Access-Token"] == TOKEN
    assert request.headers["Content-Type"] == "application/json"
    assert orjson.loads(request.content) == {
        "event_source": "web",
        "event_source_id": PIXEL,
        "test_event_code": "TEST123",
        "partner_name": "AcmeRelay",
        "data": [p.event.payload for p in batch.items],
    }
    assert metrics.value("requests_total", {"outcome": "success", "code": "0"}) == 1
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "accepted"}) == 3
    assert metrics.value("batch_size_events_count") == 1
    assert metrics.value("batch_size_events_sum") == 3
    assert metrics.value("request_duration_seconds_count") == 1
    assert metrics.value("in_flight_requests") == 0


def test_an_empty_batch_completes_without_a_request() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return envelope(0)

    with running(handler) as sender:
        sender.submit(a_batch([]))
        [done] = outcomes(sender, 1)
    assert (done.accepted, done.rejected, calls) == ([], [], [])


def test_retryable_failures_are_retried_until_accepted() -> None:
    answers: Iterator[httpx.Response | Exception] = iter(
        [httpx.Response(503), httpx.ConnectError("refused"), envelope(40100)]
    )
    metrics = Metrics()

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers, envelope(0))
        if isinstance(answer, Exception):
            raise answer
        return answer

    with running(handler, metrics=metrics, max_retries=5) as sender:
        sender.submit(a_batch(range(10)))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == list(range(10))
    assert done.rejected == []
    for reason in ("http_5xx", "network", "rate_limited"):
        assert metrics.value("retries_total", {"reason": reason}) == 1
    assert metrics.value("requests_total", {"outcome": "retryable", "code": "http_503"}) == 1
    assert metrics.value("requests_total", {"outcome": "retryable", "code": "network"}) == 1
    assert metrics.value("requests_total", {"outcome": "retryable", "code": "40100"}) == 1
    assert metrics.value("requests_total", {"outcome": "success", "code": "0"}) == 1


def test_a_request_slower_than_the_timeout_is_retried() -> None:
    calls = itertools.count()
    metrics = Metrics()

    async def handler(request: httpx.Request) -> httpx.Response:
        if next(calls) == 0:
            await asyncio.sleep(30)  # far beyond request_timeout_s: cut short
        return envelope(0)

    with running(handler, metrics=metrics, request_timeout_s=0.05) as sender:
        sender.submit(a_batch(range(2)))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == [0, 1]
    assert metrics.value("retries_total", {"reason": "timeout"}) == 1
    assert metrics.value("requests_total", {"outcome": "retryable", "code": "timeout"}) == 1


def test_retry_after_is_waited_at_least_and_capped_by_backoff_max() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "3600"}),
        ]
    )
    sleep = SleepRecorder()
    with running(
        lambda r: next(answers, envelope(0)), sleep=sleep, backoff_max_ms=20_000, rate_burst=100
    ) as sender:
        sender.submit(a_batch(range(1)))
        outcomes(sender, 1)
    assert len(sleep.delays) == 2
    assert 7.0 <= sleep.delays[0] <= 20.0
    assert sleep.delays[1] == 20.0


def test_the_batch_is_given_up_after_max_retries() -> None:
    calls: list[httpx.Request] = []
    metrics = Metrics()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    with running(handler, metrics=metrics, max_retries=3) as sender:
        sender.submit(a_batch(range(5)))
        [done] = outcomes(sender, 1)
    assert len(calls) == 4  # the first attempt and 3 retries
    assert done.accepted == []
    assert rejected_refs([done]) == list(range(5))
    assert {reason for _, reason in done.rejected} == {"gave up after 3 retries: HTTP 503"}
    assert metrics.value("retries_total", {"reason": "http_5xx"}) == 3
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "rejected"}) == 5


def test_without_max_retries_an_outage_is_waited_out_and_nothing_rejected() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503) if len(calls) <= 40 else envelope(0, "OK")

    with running(handler, max_retries=None) as sender:
        sender.submit(a_batch(range(3)))
        [done] = outcomes(sender, 1)
    assert len(calls) == 41
    assert accepted_refs([done]) == [0, 1, 2]
    assert done.rejected == []


def test_max_retries_zero_gives_up_at_once() -> None:
    with running(lambda r: envelope(50000, "System error"), max_retries=0) as sender:
        sender.submit(a_batch(range(2)))
        [done] = outcomes(sender, 1)
    assert {reason for _, reason in done.rejected} == {
        "gave up after 0 retries: 50000 System error"
    }


def test_partial_success_20001_counts_as_accepted_and_is_flagged() -> None:
    metrics = Metrics()
    with running(lambda r: envelope(20001, "Partial OK"), metrics=metrics) as sender:
        sender.submit(a_batch(range(4)))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == [0, 1, 2, 3]
    assert done.partial is True
    assert metrics.value("requests_total", {"outcome": "partial", "code": "20001"}) == 1


# -- bad payloads: bisection -------------------------------------------------------------------


class FakeTikTok:
    """Rejects any request carrying a ``bad`` event with 40002, naming it as TikTok and
    the sandbox do (``data[i]``), or not naming it, or naming the wrong one."""

    def __init__(self, naming: str = "index") -> None:
        self.naming = naming
        self.requests: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = sent_events(request)
        with self.lock:
            self.requests.append(sent_refs(request))
        bad = [i for i, e in enumerate(events) if e.get("bad")]
        if not bad:
            return envelope(0)
        where = {"index": f"data[{bad[0]}].event_id", "none": "event_id", "wrong": "data[0].x"}
        return envelope(40002, f"Invalid value for {where[self.naming]}: not a valid string")


@pytest.mark.parametrize(
    ("naming", "max_requests"),
    [
        ("index", 7),  # 1 + 2 per bad event: the named event alone, and the rest
        ("none", 45),  # halving: about 2·log2(100) per bad event
        ("wrong", 45),  # a misleading index is noticed and halving takes over
    ],
)
def test_bisection_delivers_the_good_events_and_rejects_exactly_the_bad(
    naming: str, max_requests: int
) -> None:
    bad = frozenset({13, 57, 90})
    fake = FakeTikTok(naming)
    metrics = Metrics()
    with running(fake, metrics=metrics, max_in_flight=8) as sender:
        sender.submit(a_batch(range(100), bad=bad))
        [done] = outcomes(sender, 1)
    assert rejected_refs([done]) == sorted(bad)
    assert accepted_refs([done]) == sorted(set(range(100)) - bad)
    for item, reason in done.rejected:
        assert reason.startswith("40002 Invalid value for ")
        assert item.event.payload["bad"] is True
    assert len(fake.requests) <= max_requests, fake.requests
    accepted_twice = [r for r in range(100) if sum(r in req for req in fake.requests) > 50]
    assert accepted_twice == []
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "accepted"}) == 97
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "rejected"}) == 3


def test_a_batch_that_is_all_bad_is_rejected_event_by_event() -> None:
    fake = FakeTikTok("none")
    with running(fake) as sender:
        sender.submit(a_batch(range(8), bad=frozenset(range(8))))
        [done] = outcomes(sender, 1)
    assert rejected_refs([done]) == list(range(8))
    assert len(fake.requests) == 15  # a full binary tree over 8 leaves


def test_http_413_is_bisected_until_the_requests_fit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(413) if len(sent_events(request)) > 25 else envelope(0)

    with running(handler) as sender:
        sender.submit(a_batch(range(100)))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == list(range(100))


def test_an_event_that_cannot_be_encoded_is_rejected_without_a_request() -> None:
    fake = FakeTikTok()
    items = [pending(i) for i in range(4)]
    items[2].event.payload["properties"] = {"odd": {1, 2}}  # a set is not JSON
    with running(fake) as sender:
        sender.submit(Batch(BatchKey(PIXEL, None), items))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == [0, 1, 3]
    [(item, reason)] = done.rejected
    assert item.ref == 2
    assert reason.startswith("the event cannot be encoded as JSON")
    assert all(2 not in r for r in fake.requests)


# -- fatal: halt, hold, resume on a rotated token ------------------------------------------------


class TokenGate:
    """Accepts only ``valid`` tokens (40105 for any other), recording the token of each call."""

    def __init__(self, *valid: str) -> None:
        self.valid = set(valid)
        self.tokens: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Access-Token", "")
        with self.lock:
            self.tokens.append(token)
        if token in self.valid:
            return envelope(0)
        return envelope(40105, "Access token is incorrect or has been revoked")


def test_a_refused_token_halts_everything_until_the_token_file_is_rotated(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    gate = TokenGate(NEW_TOKEN)
    metrics = Metrics()
    with running(
        gate,
        config=tiktok(None, file=token_file),
        metrics=metrics,
        sleep=asyncio.sleep,
        token_check_interval_s=0.02,
    ) as sender:
        assert sender.halted is None
        sender.submit(a_batch(range(5)))
        wait_for(lambda: sender.halted is not None)
        assert sender.halted == "40105 Access token is incorrect or has been revoked"
        assert metrics.value("sink_fatal") == 1
        sender.submit(a_batch(range(5, 10)))  # held too, not even sent
        assert not sender.wait(0.3)  # nothing completes, nothing is rejected, while halted
        assert sender.in_flight_batches == 2
        assert gate.tokens == [TOKEN]
        assert metrics.value("retries_total", {"reason": "network"}) == 0

        token_file.write_text(NEW_TOKEN + "\n")
        done = outcomes(sender, 2)
        assert sender.halted is None
        assert metrics.value("sink_fatal") == 0
    assert accepted_refs(done) == list(range(10))
    assert rejected_refs(done) == []
    assert gate.tokens[0] == TOKEN
    assert set(gate.tokens[1:]) == {NEW_TOKEN}
    assert metrics.value("requests_total", {"outcome": "fatal", "code": "40105"}) == 1


@pytest.mark.parametrize(
    "answer",
    [
        envelope(40001, "No permission to operate pixel code"),
        envelope(40102, "Access token has expired"),
        envelope(40104, "Access token is empty"),
        httpx.Response(401),
        httpx.Response(403),
        httpx.Response(404),
    ],
    ids=["40001", "40102", "40104", "http401", "http403", "http404"],
)
def test_an_environment_token_that_is_refused_stays_halted_and_close_reports_nothing(
    answer: httpx.Response,
) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer

    sender = Sender(
        tiktok(),
        delivery(),
        Metrics(),
        transport=httpx.MockTransport(handler),
        token_check_interval_s=0.01,
    )
    sender.start()
    sender.submit(a_batch(range(3)))
    wait_for(lambda: sender.halted is not None)
    assert not sender.wait(0.2)
    assert len(requests) == 1  # then nothing: re-reading the env gives the same token
    sender.close(0.1)
    assert sender.poll_completions() == []
    assert sender.in_flight_batches == 1
    assert sender.halted is not None


def test_without_a_token_the_sender_starts_halted_and_resumes_when_one_appears(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"  # not there yet
    gate = TokenGate(TOKEN)
    with running(
        gate,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=0.02,
    ) as sender:
        assert sender.halted is not None
        assert "no usable access token" in sender.halted
        assert str(token_file) in sender.halted
        sender.submit(a_batch(range(3)))
        assert not sender.wait(0.2)
        assert gate.tokens == []
        token_file.write_text(TOKEN)
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == [0, 1, 2]


def test_a_token_that_cannot_be_a_header_value_is_never_sent(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("two words")
    gate = TokenGate(TOKEN)
    with running(
        gate,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=0.02,
    ) as sender:
        sender.submit(a_batch(range(2)))
        assert sender.halted is not None
        assert not sender.wait(0.1)
        token_file.write_text(TOKEN)
        outcomes(sender, 1)
    assert gate.tokens == [TOKEN]


# -- limits ----------------------------------------------------------------------------------


def test_max_in_flight_is_never_exceeded() -> None:
    active = 0
    peak = 0
    metrics = Metrics()
    gauge_peak = [0.0]

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        gauge_peak[0] = max(gauge_peak[0], metrics.value("in_flight_requests"))
        await asyncio.sleep(0.01)
        active -= 1
        return envelope(0)

    with running(handler, metrics=metrics, max_in_flight=3) as sender:
        for first in range(0, 200, 10):
            sender.submit(a_batch(range(first, first + 10)))
        done = outcomes(sender, 20)
    assert accepted_refs(done) == list(range(200))
    assert 1 < peak <= 3
    assert gauge_peak[0] <= 3
    assert metrics.value("in_flight_requests") == 0


def test_max_in_flight_also_bounds_bisection_and_retries() -> None:
    active = 0
    peak = 0
    dice = random.Random(3)

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        if dice.random() < 0.2:
            return httpx.Response(503)
        bad = [i for i, e in enumerate(sent_events(request)) if e.get("bad")]
        return envelope(40002, "Invalid value") if bad else envelope(0)

    with running(handler, max_in_flight=2, max_retries=50) as sender:
        sender.submit(a_batch(range(64), bad=frozenset({3, 17, 40, 41})))
        sender.submit(a_batch(range(64, 80)))
        done = outcomes(sender, 2)
    assert rejected_refs(done) == [3, 17, 40, 41]
    assert peak <= 2


def test_a_batch_waiting_to_retry_holds_no_slot_and_close_cancels_it_unreported() -> None:
    forever: list[asyncio.Future[None]] = []

    async def sleep(delay: float) -> None:
        if delay >= 5:  # the retry wait of the first batch: block until cancelled
            future = asyncio.get_running_loop().create_future()
            forever.append(future)
            await future
        await asyncio.sleep(0)

    def handler(request: httpx.Request) -> httpx.Response:
        if 0 in sent_refs(request):
            return httpx.Response(503, headers={"Retry-After": "10"})
        return envelope(0)

    with running(
        handler, sleep=sleep, max_in_flight=1, rate_burst=1000, close_timeout=0.1
    ) as sender:
        sender.submit(a_batch([0, 1]))
        wait_for(lambda: bool(forever))
        sender.submit(a_batch([2, 3]))
        [done] = outcomes(sender, 1)  # completes while the first batch waits to retry
        assert accepted_refs([done]) == [2, 3]
    assert sender.poll_completions() == []  # the waiting batch was cancelled, not reported
    assert sender.in_flight_batches == 1


def test_the_rate_limit_holds_for_first_attempts_retries_and_bisection() -> None:
    virtual = VirtualTime()
    starts: list[float] = []
    calls = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(virtual.now)
        if next(calls) % 3 == 1:
            return httpx.Response(503)
        bad = [i for i, e in enumerate(sent_events(request)) if e.get("bad")]
        return envelope(40002, "Invalid value") if bad else envelope(0)

    rate = 5
    with running(
        handler,
        clock=virtual.clock,
        sleep=virtual.sleep,
        max_requests_per_s=float(rate),
        max_in_flight=8,
        max_retries=20,
        backoff_initial_ms=100,
        backoff_max_ms=2000,
    ) as sender:
        for first in range(0, 60, 4):
            sender.submit(a_batch(range(first, first + 4), bad=frozenset({5, 22})))
        done = outcomes(sender, 15)
    assert rejected_refs(done) == [5, 22]
    assert len(starts) > 20
    starts.sort()
    # No more than `rate` requests in any one-second window (burst 1: evenly spaced).
    for earlier, later in itertools.pairwise(starts):
        assert later - earlier >= 1 / rate - 1e-6
    for i in range(len(starts) - rate):
        assert starts[i + rate] - starts[i] >= 1.0 - 1e-6


# -- life ------------------------------------------------------------------------------------


def test_close_waits_for_in_flight_batches_within_its_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return envelope(0)

    sender = Sender(tiktok(), delivery(), Metrics(), transport=httpx.MockTransport(handler))
    sender.start()
    sender.submit(a_batch(range(3)))
    sender.close(WAIT_S)
    [done] = sender.poll_completions()
    assert accepted_refs([done]) == [0, 1, 2]
    assert sender.in_flight_batches == 0


def test_close_cancels_what_is_still_in_flight_without_reporting_it() -> None:
    started = threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(3600)
        return envelope(0)

    sender = Sender(tiktok(), delivery(), Metrics(), transport=httpx.MockTransport(handler))
    sender.start()
    sender.submit(a_batch(range(3)))
    assert started.wait(WAIT_S)
    began = time.monotonic()
    sender.close(0.05)
    assert time.monotonic() - began < WAIT_S
    assert sender.poll_completions() == []
    assert sender.in_flight_batches == 1
    with pytest.raises(RuntimeError, match="closed"):
        sender.submit(a_batch(range(1)))
    sender.close(0)  # idempotent


def test_submit_before_start_is_refused_and_close_without_start_is_fine() -> None:
    sender = Sender(tiktok(), delivery(), Metrics(), transport=httpx.MockTransport(ok))
    with pytest.raises(RuntimeError, match="new"):
        sender.submit(a_batch(range(1)))
    sender.close(0)


def test_on_completion_is_called_for_each_outcome() -> None:
    calls: list[int] = []
    with running(ok, on_completion=lambda: calls.append(1)) as sender:
        sender.submit(a_batch(range(1)))
        sender.submit(a_batch(range(1, 2)))
        outcomes(sender, 2)
    assert calls == [1, 1]


@pytest.mark.parametrize("endpoint", ["ftp://tiktok.test/track", "not a url", "https://"])
def test_a_wrong_endpoint_fails_when_the_sender_is_built(endpoint: str) -> None:
    config = TikTokConfig(PIXEL, AccessToken("X", Secret(TOKEN), None), endpoint=endpoint)
    with pytest.raises(ConfigError, match=r"tiktok\.endpoint"):
        Sender(config, delivery(), Metrics())


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_in_flight": 0},
        {"max_requests_per_s": 0},
        {"max_retries": -1},
        {"backoff_initial_ms": 10, "backoff_max_ms": 5},
        {"request_timeout_s": 0},
    ],
)
def test_nonsense_delivery_settings_fail_when_the_sender_is_built(
    overrides: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="delivery"):
        Sender(tiktok(), delivery(**overrides), Metrics(), transport=httpx.MockTransport(ok))


# -- secrets -----------------------------------------------------------------------------------


def test_the_token_never_reaches_logs_reasons_outcomes_or_metrics(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    metrics = Metrics()
    calls = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        n = next(calls)
        if n == 0:
            raise httpx.LocalProtocolError(f"Illegal header value {TOKEN!r}")
        if n == 1:
            return envelope(40002, f"Invalid value for access_token {TOKEN}")
        if n == 2:
            return envelope(50000, f"echo {TOKEN}")
        if n == 3:
            return envelope(40105, f"Token {TOKEN} was revoked")
        if request.headers["Access-Token"] == NEW_TOKEN:
            return envelope(0)
        return envelope(40105, f"Token {TOKEN} was revoked")

    with running(
        handler,
        config=tiktok(None, file=token_file),
        metrics=metrics,
        max_retries=1,
        sleep=asyncio.sleep,
        token_check_interval_s=0.02,
    ) as sender:
        sender.submit(a_batch([0]))  # network error, then 40002: rejected with the echo
        [first] = outcomes(sender, 1)
        sender.submit(a_batch([1]))  # 50000 echo, then 40105 echo: halted
        wait_for(lambda: sender.halted is not None)
        halted = sender.halted
        token_file.write_text(NEW_TOKEN)
        [second] = outcomes(sender, 1)

    assert halted is not None
    assert TOKEN not in halted
    assert "********" in halted
    texts = [repr(first), repr(second), halted, *(reason for _, reason in first.rejected)]
    assert first.rejected
    for text in texts:
        assert TOKEN not in text
        assert NEW_TOKEN not in text
    log_text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert TOKEN not in log_text
    assert NEW_TOKEN not in log_text
    exposition = generate_latest(metrics.registry).decode()
    assert TOKEN not in exposition
    assert NEW_TOKEN not in exposition
    assert accepted_refs([second]) == [1]


# -- the property: every event exactly once ------------------------------------------------------


class FlakyTikTok:
    """Random answers from a seeded random source: successes, partials, retryable failures
    of every kind, spurious 40002s; and 40002 for any request carrying a bad event."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = sent_events(request)
        with self.lock:
            roll = self.rng.random()
            index = self.rng.randrange(len(events))
        if roll < 0.08:
            raise httpx.ReadTimeout("slow")
        if roll < 0.14:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if roll < 0.22:
            return httpx.Response(503)
        if roll < 0.28:
            return envelope(40100, "Too many requests")
        if roll < 0.31:
            return httpx.Response(200, content=b"<html>proxy</html>")
        if roll < 0.34:
            return envelope(40002, f"Invalid value for data[{index}].event")  # spurious
        bad = [i for i, e in enumerate(events) if e.get("bad")]
        if bad:
            named = bad[0] if roll < 0.8 else index
            return envelope(40002, f"Invalid value for data[{named}].event_id")
        with self.lock:
            self.accepted.extend(sent_refs(request))
        return envelope(20001 if roll > 0.95 else 0)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    bad_ratio=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    seed=st.integers(0, 2**32),
    max_retries=st.integers(0, 4),
    max_in_flight=st.integers(1, 6),
)
def test_every_submitted_event_is_reported_exactly_once(
    sizes: list[int], bad_ratio: float, seed: int, max_retries: int, max_in_flight: int
) -> None:
    rng = random.Random(seed)
    batches: list[Batch] = []
    bad: set[int] = set()
    refs = itertools.count()
    for size in sizes:
        ids = [next(refs) for _ in range(size)]
        bad_here = {i for i in ids if rng.random() < bad_ratio}
        bad |= bad_here
        batches.append(a_batch(ids, bad=frozenset(bad_here)))
    fake = FlakyTikTok(seed)
    with running(fake, max_retries=max_retries, max_in_flight=max_in_flight) as sender:
        for batch in batches:
            sender.submit(batch)
        done = outcomes(sender, len(batches))
        assert sender.in_flight_batches == 0
    assert sorted(id(o.batch) for o in done) == sorted(id(b) for b in batches)
    for outcome in done:
        reported = [p.ref for p in outcome.accepted] + [p.ref for p, _ in outcome.rejected]
        assert sorted(reported) == sorted(p.ref for p in outcome.batch.items)
    accepted = accepted_refs(done)
    assert not set(accepted) & bad  # TikTok never took a bad event, so neither did we
    assert set(accepted) <= set(fake.accepted)
    for outcome in done:
        for item, reason in outcome.rejected:
            assert reason.startswith(("gave up after", "40002 Invalid value"))
            if item.ref not in bad:  # a good event is only lost to a spurious 40002 or retries
                assert reason.startswith(("gave up after", "40002 Invalid value for data["))
