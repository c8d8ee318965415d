"""The sender against httpx.MockTransport, one batch at a time: the request TikTok
expects and what an accepted batch reports and counts; retries of every retryable
failure up to max_retries (or without end), Retry-After and partial success; and the
sender's life: start, close within its timeout, cancelling what is unfinished without
reporting it, and settings that fail when the sender is built. No network, no real
waiting for backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from processor.batching import Batch
from processor.config import AccessToken, Secret, TikTokConfig
from processor.errors import ConfigError
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sink import Sender
from tests.unit.sinkkit import (
    ENDPOINT,
    PIXEL,
    TOKEN,
    WAIT_S,
    SleepRecorder,
    a_batch,
    accepted_refs,
    delivery,
    envelope,
    ok,
    outcomes,
    pending,
    rejected_refs,
    running,
    sent_refs,
    tiktok,
    wait_for,
)

# -- the request ---------------------------------------------------------------------------


def test_a_batch_is_posted_as_tiktok_expects_and_accepted() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return envelope(0)

    metrics = Metrics()
    batch = Batch(BatchKey("web", PIXEL, "TEST123"), [pending(i) for i in range(3)])
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
        "data": [p.payload for p in batch.items],
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


# -- life ----------------------------------------------------------------------------------


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
    field = next(iter(overrides))
    with pytest.raises(ConfigError, match=f"delivery.{field}: must be"):
        Sender(tiktok(), delivery(**overrides), Metrics(), transport=httpx.MockTransport(ok))


async def sleep_forever(_delay: float) -> None:
    """An injected sleep that never ends: only something else can end a wait."""
    await asyncio.Event().wait()


def test_a_delivered_request_wakes_the_retries_backing_off_from_an_outage() -> None:
    calls: list[list[int]] = []
    outage = threading.Event()
    outage.set()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(sent_refs(request))
        return httpx.Response(503) if outage.is_set() else envelope(0)

    with running(handler, sleep=sleep_forever, rate_burst=100, max_retries=None) as sender:
        sender.submit(a_batch(range(2)))
        wait_for(lambda: len(calls) == 1)  # refused, now backing off for good
        outage.clear()
        sender.submit(a_batch(range(2, 4)))
        done = outcomes(sender, 2)
    # The second batch's delivery ended the first one's wait: it went again at once.
    assert calls == [[0, 1], [2, 3], [0, 1]]
    assert sorted(accepted_refs(done)) == [0, 1, 2, 3]


def test_a_wait_tiktok_asked_for_is_kept_whatever_else_is_delivered() -> None:
    calls: list[list[int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(sent_refs(request))
        return httpx.Response(429) if len(calls) == 1 else envelope(0)

    with running(
        handler, sleep=sleep_forever, rate_burst=100, max_retries=None, close_timeout=0.1
    ) as sender:
        sender.submit(a_batch(range(2)))
        wait_for(lambda: len(calls) == 1)
        sender.submit(a_batch(range(2, 4)))
        [done] = outcomes(sender, 1)
        assert accepted_refs([done]) == [2, 3]
        time.sleep(0.2)
        assert calls == [[0, 1], [2, 3]]  # the rate-limited batch still waits its turn
