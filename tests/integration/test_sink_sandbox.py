"""The TikTok sink against the real sandbox over HTTP on 127.0.0.1 (no Kafka needed):
delivery, every injected fault, bad events isolated by bisection, and token rotation."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from processor.batching import Batch, PendingEvent
from processor.config import AccessToken, DeliveryConfig, Secret, TikTokConfig
from processor.mapping import MappedEvent
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sandbox import Sandbox
from processor.sink import BatchOutcome, Sender
from tests.unit.sinkkit import outcomes, wait_for

PIXEL = "D34FV3JC77U1PDQ72P1G"
# Distinctive, so a leak anywhere is found by a plain substring search.
TOKEN = "tok-sandbox-3e9a41-never-log-me"
NEW_TOKEN = "tok-sandbox-b07c55-rotated-never-log-me"
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"


def an_event(event_id: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "ViewContent",
        "event_time": int(time.time()) - 60,
        "event_id": event_id,
        "user": {"email": SHA, "ip": "203.0.113.7"},
        "properties": {"currency": "EUR", "value": 9.5, "contents": [{"content_id": "sku-1"}]},
    }
    event.update(fields)
    return event


def a_batch(
    count: int,
    *,
    test_event_code: str | None = None,
    change: Callable[[int, dict[str, Any]], None] | None = None,
) -> Batch:
    """``count`` events with unique ids; ``change(i, event)`` may spoil some."""
    prefix = uuid.uuid4().hex[:12]
    items = []
    for i in range(count):
        event = an_event(f"{prefix}-{i}")
        if change is not None:
            change(i, event)
        items.append(
            PendingEvent.of(i, MappedEvent.of("views", "web", PIXEL, test_event_code, event))
        )
    return Batch(BatchKey("web", PIXEL, test_event_code), items)


def ids_of(items: list[PendingEvent]) -> set[str]:
    return {str(item.payload["event_id"]) for item in items}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(tokens=(TOKEN,)) as sb:
        yield sb


@contextmanager
def sending(
    sandbox: Sandbox,
    *,
    token_file: Path | None = None,
    metrics: Metrics | None = None,
    sleep: Callable[[float], Any] | None = None,
    **overrides: Any,
) -> Iterator[Sender]:
    secret = None if token_file else Secret(TOKEN)
    config = TikTokConfig(
        PIXEL,
        AccessToken("TIKTOK_ACCESS_TOKEN", secret, token_file),
        endpoint=sandbox.endpoint,
        partner_name="SinkTests",
    )
    settings: dict[str, Any] = {
        "max_in_flight": 8,
        "max_requests_per_s": 500.0,
        "max_retries": 10,
        "backoff_initial_ms": 10,
        "backoff_max_ms": 2000,
        "request_timeout_s": 5.0,
    }
    settings.update(overrides)
    options: dict[str, Any] = {"token_check_interval_s": 0.05, "rng": random.Random(7)}
    if sleep is not None:
        options["sleep"] = sleep
    sender = Sender(config, DeliveryConfig(**settings), metrics or Metrics(), **options)
    sender.start()
    try:
        yield sender
    finally:
        sender.close(5.0)


def stored_ids(sandbox: Sandbox, scope: str = "all") -> set[str]:
    return {e["event"]["event_id"] for e in sandbox.events(scope=scope, limit=100_000)}


def assert_all_accepted(done: list[BatchOutcome], batches: list[Batch]) -> None:
    assert [o.rejected for o in done] == [[] for _ in done]
    assert sum(len(o.accepted) for o in done) == sum(len(b.items) for b in batches)


# -- delivering ----------------------------------------------------------------------------------


def test_batches_are_delivered_and_stored_as_sent(sandbox: Sandbox) -> None:
    batches = [a_batch(50), a_batch(50), a_batch(10, test_event_code="TEST42")]
    metrics = Metrics()
    with sending(sandbox, metrics=metrics) as sender:
        for batch in batches:
            sender.submit(batch)
        done = outcomes(sender, 3)
        assert sender.in_flight_batches == 0
    assert_all_accepted(done, batches)
    stats = sandbox.stats()
    assert stats["events"]["accepted"] == 100
    assert stats["test_events"]["accepted"] == 10
    assert stored_ids(sandbox, "live") == ids_of(batches[0].items) | ids_of(batches[1].items)
    assert stored_ids(sandbox, "test") == ids_of(batches[2].items)
    first = batches[0].items[0].payload
    [stored] = sandbox.events(event_id=first["event_id"])
    assert stored["event"] == first
    assert stored["pixel"] == PIXEL
    assert metrics.value("requests_total", {"outcome": "success", "code": "0"}) == 3
    assert (
        metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "accepted"}) == 110
    )


# -- faults: everything is eventually accepted, nothing rejected -----------------------------------


@pytest.mark.parametrize(
    ("faults", "retry_reason"),
    [
        ("next=http503*2", "http_5xx"),
        ("next=drop", "network"),
        ("next=drop*2", "network"),
        ("next=40100*2", "rate_limited"),
        ("next=50000,next=50002,next=51000,next=60001,next=61000", "server"),
        ("next=http429*2,retry_after=1", "http_429"),
    ],
)
def test_injected_faults_are_retried_until_everything_is_accepted(
    sandbox: Sandbox, faults: str, retry_reason: str
) -> None:
    sandbox.set_faults(faults)
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(delay)

    metrics = Metrics()
    batches = [a_batch(30) for _ in range(3)]
    with sending(sandbox, metrics=metrics, sleep=sleep) as sender:
        for batch in batches:
            sender.submit(batch)
        done = outcomes(sender, 3)
    assert_all_accepted(done, batches)
    assert sandbox.stats()["events"]["accepted"] == 90
    assert sandbox.faults()["next_remaining"] == []
    assert metrics.value("retries_total", {"reason": retry_reason}) >= 1
    if retry_reason == "http_429":
        assert max(delays) >= 1.0  # the sandbox's Retry-After: 1 was waited out


def test_answers_slower_than_the_request_timeout_are_retried(sandbox: Sandbox) -> None:
    sandbox.set_faults("latency=1500ms")
    metrics = Metrics()
    batch = a_batch(20)
    with sending(sandbox, metrics=metrics, request_timeout_s=0.3) as sender:
        sender.submit(batch)
        wait_for(lambda: metrics.value("retries_total", {"reason": "timeout"}) >= 1)
        sandbox.set_faults(None)
        done = outcomes(sender, 1)
    assert_all_accepted(done, [batch])
    # The late copy of a timed-out request may land too: TikTok-style dedup keeps one.
    assert stored_ids(sandbox) == ids_of(batch.items)
    assert sandbox.stats()["events"]["accepted"] == 20


def test_random_faults_under_load_lose_nothing(sandbox: Sandbox) -> None:
    sandbox.set_faults("http=503:0.1,drop=0.05,code=40100:0.1,code=50002:0.05,seed=3")
    batches = [a_batch(100) for _ in range(10)]
    with sending(sandbox, max_retries=30) as sender:
        for batch in batches:
            sender.submit(batch)
        done = outcomes(sender, len(batches))
    assert_all_accepted(done, batches)
    assert sandbox.stats()["events"]["accepted"] == 1000


def test_a_rate_limited_sandbox_still_gets_everything(sandbox: Sandbox) -> None:
    sandbox.set_faults("rps=20,burst=2")
    batches = [a_batch(5) for _ in range(15)]
    with sending(sandbox, max_requests_per_s=15.0, max_retries=30) as sender:
        for batch in batches:
            sender.submit(batch)
        done = outcomes(sender, len(batches))
    assert_all_accepted(done, batches)
    assert sandbox.stats()["events"]["accepted"] == 75


# -- bad events -------------------------------------------------------------------------------


def test_bad_events_are_rejected_with_the_sandbox_message_and_the_rest_stored(
    sandbox: Sandbox,
) -> None:
    def spoil(i: int, event: dict[str, Any]) -> None:
        if i == 4:
            event["event_id"] = 12345  # not a string: 40002
        if i == 11:
            event["user"]["email"] = "jane@example.com"  # not hashed: 40062

    batch = a_batch(20, change=spoil)
    metrics = Metrics()
    with sending(sandbox, metrics=metrics) as sender:
        sender.submit(batch)
        [done] = outcomes(sender, 1)
    rejected = {item.ref: reason for item, reason in done.rejected}
    assert set(rejected) == {4, 11}
    # Named by their indexes in the batch, not in the requests that carried them alone.
    assert rejected[4].startswith("40002 Invalid value for data[4].event_id")
    assert rejected[11].startswith("40062 PII not hashed: data[11].user.email")
    assert "jane@example.com" not in rejected[11]
    good = [item for item in batch.items if item.ref not in (4, 11)]
    assert sorted(p.ref for p in done.accepted) == sorted(p.ref for p in good)
    assert stored_ids(sandbox) == ids_of(good)
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "rejected"}) == 2


# -- the token ----------------------------------------------------------------------------------


def test_a_revoked_token_halts_until_the_file_holds_the_new_one(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "tiktok-token"
    token_file.write_text(TOKEN + "\n")
    metrics = Metrics()
    with sending(sandbox, token_file=token_file, metrics=metrics) as sender:
        first = a_batch(10)
        sender.submit(first)
        outcomes(sender, 1)

        sandbox.set_tokens([NEW_TOKEN])  # the old token now answers 40105
        held = [a_batch(10), a_batch(10)]
        for batch in held:
            sender.submit(batch)
        wait_for(lambda: sender.halted is not None)
        assert sender.halted is not None
        assert sender.halted.startswith("40105")
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 1
        assert not sender.wait(0.3)
        assert sender.in_flight_batches == 2
        assert sandbox.stats()["events"]["accepted"] == 10

        token_file.write_text(NEW_TOKEN + "\n")
        done = outcomes(sender, 2)
        assert sender.halted is None
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 0
    assert_all_accepted(done, held)
    assert stored_ids(sandbox) == ids_of(first.items) | ids_of(held[0].items) | ids_of(
        held[1].items
    )
    for text in (caplog.text, *(repr(o) for o in done)):
        assert TOKEN not in text
        assert NEW_TOKEN not in text


def test_a_token_that_expires_mid_stream_halts_and_resumes_after_rotation(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.set_faults("token_after=2:40102")
    token_file = tmp_path / "tiktok-token"
    token_file.write_text(TOKEN)
    batches = [a_batch(10) for _ in range(5)]
    with sending(sandbox, token_file=token_file, max_in_flight=1) as sender:
        for batch in batches:
            sender.submit(batch)
        wait_for(lambda: sender.halted is not None)
        assert sender.halted is not None
        assert sender.halted.startswith("40102")
        sandbox.set_tokens([NEW_TOKEN])
        token_file.write_text(NEW_TOKEN)
        done = outcomes(sender, len(batches))
    assert_all_accepted(done, batches)
    assert sandbox.stats()["events"]["accepted"] == 50
