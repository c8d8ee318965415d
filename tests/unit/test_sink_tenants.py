"""Tokens per pixel: the :class:`TenantRouter` routes each batch to its pixel's sender, a
refused token halts only its pixel (its batches held, never reported, never dead-lettered)
while the others flow, and a rotated token file resumes that pixel alone. Then the same
through the poll loop, over the in-memory Kafka: the other pixel's partitions are consumed
and committed while the held pixel's stay where its first held record is.

Against httpx.MockTransport, no network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import generate_latest

from processor.batching import Batch
from processor.config import AccessToken, PixelToken, Secret, TikTokConfig, load_config
from processor.kafka.api import TopicPartition
from processor.kafka.memory import MemorySource
from processor.loop import Processor
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sample import ClickstreamGenerator
from processor.sink import BatchOutcome, TenantRouter
from processor.transform import build_transformer
from tests.conftest import EXAMPLE_CONFIG
from tests.unit.sinkkit import (
    ENDPOINT,
    PIXEL,
    TOKEN,
    WAIT_S,
    accepted_refs,
    delivery,
    envelope,
    pending,
    wait_for,
)
from tests.unit.test_loop import NOW, TP0, page_views, publish

PIXEL_A = "CSHOPAPIXEL00000001"
PIXEL_B = "CSHOPBPIXEL00000002"
OTHER_PIXEL = "COTHERPIXEL00000003"  # listed nowhere: the default token's
# Distinctive, so a leak anywhere is found by a plain substring search.
TOKEN_A = "tok-a1a1a1a1-shop-a-never-log-me"
TOKEN_A_NEW = "tok-a2a2a2a2-shop-a-rotated-never-log-me"
TOKEN_A_WRONG = "tok-a3a3a3a3-shop-a-also-wrong-never-log-me"
TOKEN_B = "tok-b1b1b1b1-shop-b-never-log-me"
ALL_TOKENS = (TOKEN, TOKEN_A, TOKEN_A_NEW, TOKEN_A_WRONG, TOKEN_B)
TPS = TopicPartition("web.signups", 0)


# -- TikTok's side: which token may operate which pixel ----------------------------------------


class PixelGate:
    """TikTok's token checks: 40105 for a token it does not know, 40001 for a pixel the
    token may not operate, else accepted. ``echo``: every refusal quotes the token, as a
    careless proxy might. Records (token, pixel, events) of every request."""

    def __init__(self, grants: dict[str, set[str]], *, echo: bool = False) -> None:
        self.grants = grants
        self.echo = echo
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Access-Token", "")
        body = orjson.loads(request.content)
        pixel = body["event_source_id"]
        quoted = f" (token {token})" if self.echo else ""
        with self.lock:
            self.calls.append((token, pixel, len(body["data"])))
            allowed = self.grants.get(token)
        if allowed is None:
            return envelope(40105, f"Access token is incorrect or has been revoked{quoted}")
        if pixel not in allowed:
            return envelope(40001, f"No permission to operate pixel code: {pixel}{quoted}")
        return envelope(0)

    def revoke(self, token: str) -> None:
        with self.lock:
            self.grants.pop(token, None)

    def grant(self, token: str, *pixels: str) -> None:
        with self.lock:
            self.grants[token] = set(pixels)

    def tokens_for(self, pixel: str) -> list[str]:
        with self.lock:
            return [token for token, p, _ in self.calls if p == pixel]


def a_gate(**options: Any) -> PixelGate:
    return PixelGate(
        {TOKEN: {PIXEL, OTHER_PIXEL}, TOKEN_A: {PIXEL_A}, TOKEN_B: {PIXEL_B}}, **options
    )


# -- configs, batches, a running router -----------------------------------------------------------


def three_tenants(tmp_path: Path) -> TikTokConfig:
    """The default token (file), shop-a (its own file) and shop-b (an environment value)."""
    (tmp_path / "default-token").write_text(TOKEN)
    (tmp_path / "shop-a-token").write_text(TOKEN_A)
    return TikTokConfig(
        PIXEL,
        AccessToken("TIKTOK_ACCESS_TOKEN", None, tmp_path / "default-token"),
        endpoint=ENDPOINT,
        pixels=(
            PixelToken("shop-a", PIXEL_A, AccessToken("", None, tmp_path / "shop-a-token")),
            PixelToken("shop-b", PIXEL_B, AccessToken("SHOP_B_TOKEN", Secret(TOKEN_B), None)),
        ),
    )


def batch_for(pixel: str, refs: range) -> Batch:
    items = [pending(i) for i in refs]
    return Batch(BatchKey("web", pixel, None), items)


@contextmanager
def routing(
    handler: Callable[[httpx.Request], Any],
    config: TikTokConfig,
    metrics: Metrics | None = None,
    **overrides: Any,
) -> Iterator[TenantRouter]:
    """A started router whose requests go to ``handler``, re-reading token files every
    10 ms (with the real sleep: a sleep that returns at once would make it a busy loop)."""
    router = TenantRouter(
        config,
        delivery(**overrides),
        metrics or Metrics(),
        transport=httpx.MockTransport(handler),
        token_check_interval_s=0.01,
    )
    router.start()
    try:
        yield router
    finally:
        router.close(0.5)  # what a halted tenant holds is cancelled after that


def collect(router: TenantRouter, count: int, timeout: float = WAIT_S) -> list[BatchOutcome]:
    done: list[BatchOutcome] = []
    deadline = time.monotonic() + timeout
    while len(done) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(done)} of {count} batches completed in {timeout}s")
        router.wait(0.2)
        done += router.poll_completions()
    return done


def fatal(metrics: Metrics, pixel: str) -> float:
    return metrics.value("sink_fatal", {"pixel": pixel})


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "processor.sink"]


# -- routing -------------------------------------------------------------------------------------


def test_each_batch_goes_with_its_pixels_token_and_an_unlisted_pixel_with_the_default(
    tmp_path: Path,
) -> None:
    gate = a_gate()
    metrics = Metrics()
    with routing(gate, three_tenants(tmp_path), metrics) as router:
        assert [t.name for t in router.tenants] == ["default", "shop-a", "shop-b"]
        for pixel, refs in (
            (PIXEL_A, range(0, 2)), (PIXEL_B, range(2, 4)), (OTHER_PIXEL, range(4, 6)),
            (PIXEL, range(6, 8)),
        ):  # fmt: skip
            router.submit(batch_for(pixel, refs))
        done = collect(router, 4)
    assert accepted_refs(done) == list(range(8))
    assert gate.tokens_for(PIXEL_A) == [TOKEN_A]
    assert gate.tokens_for(PIXEL_B) == [TOKEN_B]
    assert gate.tokens_for(OTHER_PIXEL) == [TOKEN]
    assert gate.tokens_for(PIXEL) == [TOKEN]
    for pixel in ("default", "shop-a", "shop-b"):  # every configured name, and default
        assert metrics.registry.get_sample_value("tiktok_events_sink_fatal", {"pixel": pixel}) == 0


# -- one pixel halted, the others flowing, then rotated ------------------------------------------


def test_a_refused_pixel_halts_alone_its_batches_held_until_its_token_file_is_rotated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="processor.sink")
    gate = a_gate()
    gate.revoke(TOKEN_A)  # shop-a's token stops working: 40105
    metrics = Metrics()
    config = three_tenants(tmp_path)
    with routing(gate, config, metrics) as router:
        router.submit(batch_for(PIXEL_A, range(0, 3)))
        wait_for(lambda: router.partly_halted is not None)
        assert router.partly_halted.startswith("pixel shop-a: 40105 ")
        assert router.halted is None  # the others deliver: the loop must not pause
        assert fatal(metrics, "shop-a") == 1
        assert (fatal(metrics, "default"), fatal(metrics, "shop-b")) == (0, 0)

        # The other pixels flow while shop-a is held; shop-a's new batches are held too.
        router.submit(batch_for(PIXEL_B, range(10, 13)))
        router.submit(batch_for(PIXEL_A, range(3, 5)))
        router.submit(batch_for(OTHER_PIXEL, range(20, 22)))
        flowing = collect(router, 2)
        assert accepted_refs(flowing) == [10, 11, 12, 20, 21]
        time.sleep(0.2)  # twenty token checks: nothing of shop-a completes meanwhile
        assert router.poll_completions() == []
        assert router.in_flight_batches == 2
        assert gate.tokens_for(PIXEL_A) == [TOKEN_A]  # sent once, then held at the gate

        # Rotated: a held request tries the new token, then shop-a's batches go out.
        gate.grant(TOKEN_A_NEW, PIXEL_A)
        (tmp_path / "shop-a-token").write_text(TOKEN_A_NEW + "\n")
        resumed = collect(router, 2)
        assert accepted_refs(resumed) == [0, 1, 2, 3, 4]
        assert all(not o.rejected for o in flowing + resumed)  # nothing dead-lettered
        wait_for(lambda: router.partly_halted is None)
        assert fatal(metrics, "shop-a") == 0
    assert set(gate.tokens_for(PIXEL_A)) == {TOKEN_A, TOKEN_A_NEW}
    logged = messages(caplog)
    assert any(m.startswith("delivery halted for pixel shop-a: 40105 ") for m in logged)
    assert "delivery resumed for pixel shop-a: TikTok accepted the new access token" in logged
    assert not any("default token" in m or "shop-b" in m for m in logged)


def test_a_pixel_rotated_to_another_wrong_token_stays_halted_and_the_others_never_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="processor.sink")
    gate = a_gate()
    gate.revoke(TOKEN_A)
    with routing(gate, three_tenants(tmp_path)) as router:
        router.submit(batch_for(PIXEL_A, range(3)))
        wait_for(lambda: router.partly_halted is not None)
        (tmp_path / "shop-a-token").write_text(TOKEN_A_WRONG)
        wait_for(
            lambda: any(m.startswith("still halted for pixel shop-a") for m in messages(caplog))
        )
        router.submit(batch_for(PIXEL_B, range(10, 12)))
        assert accepted_refs(collect(router, 1)) == [10, 11]
        assert router.partly_halted is not None
        assert router.partly_halted.startswith("pixel shop-a: 40105 ")
        assert router.poll_completions() == []
        assert router.held_events == 3  # shop-a's batch; shop-b's finished
    assert not any(m.startswith("delivery resumed") for m in messages(caplog))


def test_only_when_every_tenant_is_halted_is_the_router_halted(tmp_path: Path) -> None:
    gate = a_gate()
    gate.revoke(TOKEN_A)
    gate.revoke(TOKEN_B)
    with routing(gate, three_tenants(tmp_path)) as router:
        router.submit(batch_for(PIXEL_A, range(0, 1)))
        router.submit(batch_for(PIXEL_B, range(1, 2)))
        wait_for(lambda: router.partly_halted is not None and "shop-b" in router.partly_halted)
        assert router.halted is None
        gate.revoke(TOKEN)
        router.submit(batch_for(OTHER_PIXEL, range(2, 3)))
        wait_for(lambda: router.halted is not None)
        assert router.partly_halted is None
        halted = router.halted
        assert halted is not None
        assert halted.startswith("default token: 40105 ")
        assert "; pixel shop-a: 40105 " in halted
        assert "; pixel shop-b: 40105 " in halted


def test_with_one_token_the_router_answers_as_the_lone_sender_always_did(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="processor.sink")
    (tmp_path / "token").write_text(TOKEN)
    config = TikTokConfig(PIXEL, AccessToken("T", None, tmp_path / "token"), endpoint=ENDPOINT)
    gate = PixelGate({})  # every token refused
    metrics = Metrics()
    with routing(gate, config, metrics) as router:
        router.submit(batch_for(PIXEL, range(2)))
        wait_for(lambda: router.halted is not None)
        assert router.halted.startswith("40105 ")  # no tenant named: there is one
        assert router.partly_halted is None
        assert fatal(metrics, "default") == 1
    assert any(m.startswith("delivery halted: 40105 ") for m in messages(caplog))


# -- limits, close, secrets ------------------------------------------------------------------------


def test_the_in_flight_limit_is_the_process_s_whatever_the_number_of_tenants(
    tmp_path: Path,
) -> None:
    gate = a_gate()
    busy = 0
    most = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal busy, most
        busy += 1
        most = max(most, busy)
        await asyncio.sleep(0.01)
        busy -= 1
        return gate(request)

    with routing(slow, three_tenants(tmp_path), max_in_flight=2) as router:
        for n, pixel in enumerate([PIXEL_A, PIXEL_B, OTHER_PIXEL] * 4):
            router.submit(batch_for(pixel, range(n * 2, n * 2 + 2)))
        done = collect(router, 12)
    assert accepted_refs(done) == list(range(24))
    assert most == 2  # one loop, one set of slots for every tenant


def test_close_cancels_a_halted_pixels_held_batches_without_reporting_them(
    tmp_path: Path,
) -> None:
    gate = a_gate()
    gate.revoke(TOKEN_A)
    router = TenantRouter(
        three_tenants(tmp_path),
        delivery(),
        Metrics(),
        transport=httpx.MockTransport(gate),
        token_check_interval_s=0.01,
    )
    router.start()
    router.submit(batch_for(PIXEL_A, range(3)))
    wait_for(lambda: router.partly_halted is not None)
    started = time.monotonic()
    router.close(0.2)
    assert time.monotonic() - started < 5
    assert router.poll_completions() == []  # never reported: its records stay uncommitted
    router.close(0.2)  # idempotent


def test_no_tenants_token_shows_in_logs_reasons_readiness_or_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gate = a_gate(echo=True)  # every refusal quotes the token it was sent
    gate.revoke(TOKEN_A)
    gate.grant(TOKEN_B)  # shop-b's token may operate nothing: 40001
    metrics = Metrics()
    seen: list[str] = []
    with routing(gate, three_tenants(tmp_path), metrics, max_retries=0) as router:
        router.submit(batch_for(PIXEL_A, range(2)))
        router.submit(batch_for(PIXEL_B, range(2, 4)))
        wait_for(lambda: router.partly_halted is not None and "shop-b" in router.partly_halted)
        seen.append(str(router.partly_halted))
        (tmp_path / "shop-a-token").write_text(TOKEN_A_WRONG)  # refused too, and quoted
        wait_for(lambda: any("still halted" in m for m in messages(caplog)))
        seen.append(str(router.partly_halted))
        seen += [repr(t) for t in router.tenants]
    seen.append(generate_latest(metrics.registry).decode())
    seen += [r.getMessage() for r in caplog.records]
    seen.append(repr(three_tenants(tmp_path)))
    text = "\n".join(seen)
    assert "********" in text  # the echoes were there, redacted
    for token in ALL_TOKENS:
        assert token not in text
        assert token[:12] not in text


# -- through the poll loop -------------------------------------------------------------------------


def sign_ups(count: int) -> list[bytes]:
    """``count`` sign-up record values, each mapped to a CompleteRegistration event."""
    gen = ClickstreamGenerator(seed=7, start=NOW - 60)
    out: list[bytes] = []
    while len(out) < count:
        record = next(gen.records(1))
        if record.kind == "sign_up" and record.expected_event is not None:
            out.append(record.value)
    return out


def loop_with_tenants(
    tmp_path: Path, handler: PixelGate, **delivery_settings: Any
) -> tuple[Processor, MemorySource, TenantRouter]:
    """The example pipeline with sign-ups sent to pixel shop-b (its own token file) and
    page views to the default pixel; web.pageviews[0] and web.signups[0] assigned."""
    (tmp_path / "default-token").write_text(TOKEN)
    (tmp_path / "shop-b-token").write_text(TOKEN_B)
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["tiktok"] = {
        "pixel_code": PIXEL,
        "endpoint": ENDPOINT,
        "access_token_file": str(tmp_path / "default-token"),
        "pixels": [
            {"name": "shop-b", "event_source_id": PIXEL_B, "access_token_file": "shop-b-token"}
        ],
    }
    raw["delivery"] = {
        "max_batch_events": 2,
        "linger_ms": 0,
        "commit_interval_ms": 10,
        "drain_timeout_s": 0.2,
        "max_requests_per_s": 10_000,
        **delivery_settings,
    }
    (sign_up_mapping,) = [m for m in raw["mappings"] if m["topic"] == TPS.topic]
    sign_up_mapping["pixel_code"] = PIXEL_B
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(path, environ={}, require_token=True)
    transformer, _ = build_transformer(config, lambda: NOW)
    router = TenantRouter(
        config.tiktok,
        config.delivery,
        Metrics(),
        transport=httpx.MockTransport(handler),
        token_check_interval_s=0.01,
    )
    source = MemorySource([TP0, TPS])
    processor = Processor(config, transformer, Metrics(), router, source)
    processor.start()
    return processor, source, router


def turn_until(
    processor: Processor, condition: Callable[[], bool], timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert processor.turn()
        time.sleep(0.002)
        assert time.monotonic() < deadline, "condition not met in time"


def test_the_loop_consumes_and_commits_the_other_pixels_while_one_pixel_is_held(
    tmp_path: Path,
) -> None:
    gate = a_gate()
    gate.revoke(TOKEN_B)  # shop-b (the sign-ups) is refused
    processor, source, router = loop_with_tenants(tmp_path, gate)
    try:
        for value in sign_ups(4):
            source.append(TPS.topic, 0, value, timestamp=NOW)
        turn_until(processor, lambda: router.partly_halted is not None)
        ready, reason = processor.ready
        assert not ready
        assert reason.startswith("halted: pixel shop-b: 40105 ")

        # Page views (the default pixel) keep being consumed, delivered and committed.
        for round_ in range(3):
            publish(source, 0, page_views(round_, 4))
            end = source.end(TP0)
            turn_until(processor, lambda end=end: source.committed.get(TP0) == end)
            assert not source.paused
        assert source.committed.get(TPS, 0) == 0  # nothing past the first held sign-up
        assert processor.report.events_accepted == 12
        assert processor.report.rejected == {}  # a token error dead-letters nothing

        gate.grant(TOKEN_A_NEW, PIXEL_B)
        (tmp_path / "shop-b-token").write_text(TOKEN_A_NEW)
        turn_until(processor, lambda: source.committed.get(TPS) == 4)
        turn_until(processor, lambda: processor.ready == (True, "ok"))
        assert processor.report.events_accepted == 16
    finally:
        processor.request_stop()
        assert processor.shutdown() == 0


def test_held_events_count_in_the_buffer_and_a_full_buffer_pauses_every_pixel(
    tmp_path: Path,
) -> None:
    gate = a_gate()
    gate.revoke(TOKEN_B)
    processor, source, router = loop_with_tenants(tmp_path, gate, max_buffered_events=4)
    try:
        for value in sign_ups(6):
            source.append(TPS.topic, 0, value, timestamp=NOW)
        # The held sign-ups fill the buffer: everything pauses, though only shop-b is halted.
        turn_until(processor, lambda: source.paused and router.partly_halted is not None)
        assert router.halted is None
        publish(source, 0, page_views(0, 4))
        for _ in range(20):
            assert processor.turn()
        assert source.committed.get(TP0) is None  # paused: page views wait their turn

        # Granted before it is written: the sender may try the new token the moment the
        # file holds it, and a refusal then would rightly keep shop-b halted.
        gate.grant(TOKEN_A_NEW, PIXEL_B)
        (tmp_path / "shop-b-token").write_text(TOKEN_A_NEW)
        turn_until(processor, lambda: not source.paused)
        turn_until(
            processor,
            lambda: source.committed.get(TPS) == 6 and source.committed.get(TP0) == 4,
        )
    finally:
        processor.request_stop()
        assert processor.shutdown() == 0
