"""TikTok (the sandbox) fails: HTTP 5xx, 429 with Retry-After, time-outs, dropped
connections and 40100 rate-limit bursts; and the access token revoked mid-stream, then
rotated through the token file. Each scenario accounts for every expected event by its
``event_id`` (see ``accounting.py``) and asserts that none is lost."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from processor.sandbox import Sandbox
from tests.faults.accounting import (
    SOAK,
    FaultTable,
    Ledger,
    accepted_events,
    conclude,
    dead_letter_sources,
    size,
    wait_running,
)
from tests.integration.pipeline import MakePipeline, Pipeline, ProcessorProcess

pytestmark = pytest.mark.timeout(3600 if SOAK else 300)

ROTATED = "tok-rotated-faults"


def accepted(pipeline: Pipeline) -> int:
    return int(pipeline.sandbox.stats()["events"]["accepted"])


def requests_with_code(pipeline: Pipeline, code: str) -> float:
    """The processor's ``tiktok_events_requests_total`` for one classified code."""
    try:
        text = httpx.get(f"http://127.0.0.1:{pipeline.metrics_port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tiktok_events_requests_total{") and f'code="{code}"' in line
    )


def test_5xx_429_timeouts_dropped_connections_and_40100_bursts_lose_nothing(
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
    fault_table: FaultTable,
) -> None:
    # A jitter above request_timeout_s: a share of requests time out on the processor's
    # side after the sandbox has stored their events (re-sent: duplicates, not losses).
    pipeline = make_pipeline(
        delivery={"max_batch_events": 50, "max_in_flight": 4, "request_timeout_s": 0.5}
    )
    sandbox.set_faults(
        "http=503:0.08,http=500:0.03,http=502:0.02,http=429:0.05,retry_after=1,"
        "code=50000:0.03,code=40100:0.05,drop=0.05,jitter=800ms,next=40100*20,seed=17"
    )
    ledger = Ledger(pipeline)
    ledger.sample(size(3000, 20000), seed=501)
    processor = processors(pipeline)
    half = len(ledger.expected_events) // 2
    wait_running(processor, lambda: accepted(pipeline) >= half, 120, "half of the events accepted")
    # A second rate-limit burst mid-stream, with the other faults still on.
    sandbox.set_faults(
        "next=40100*30,http=503:0.08,http=429:0.05,retry_after=1,drop=0.05,jitter=800ms,seed=18"
    )
    ledger.sample(size(1000, 5000), seed=502)
    wait_running(
        processor, lambda: requests_with_code(pipeline, "timeout") > 0, 60, "a request timing out"
    )
    faults = sandbox.stats()["faults"]
    conclude(
        ledger, processor, fault_table, fault="sandbox 5xx/429/timeout/drop/40100", timeout=180
    )
    assert faults["dropped"] > 0
    assert faults["http"].get("503", 0) > 0
    assert faults["http"].get("429", 0) > 0
    assert faults["codes"].get("40100", 0) >= 20


def test_a_revoked_token_halts_without_dead_letters_and_a_rotated_one_delivers_the_rest(
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
    fault_table: FaultTable,
) -> None:
    pipeline = make_pipeline(delivery={"max_batch_events": 50, "max_in_flight": 2})
    # After 20 authorised requests (~1000 events) every token answers 40105 (revoked).
    sandbox.set_faults("token_after=20:40105,latency=20ms")
    ledger = Ledger(pipeline)
    ledger.sample(size(3000, 20000), seed=601)
    processor = processors(pipeline)
    wait_running(
        processor, lambda: pipeline.metric("tiktok_events_sink_fatal") == 1, 60, "delivery halted"
    )
    assert pipeline.health("/readyz") == 503
    assert accepted(pipeline) < len(ledger.expected_events), "halted too late to prove anything"
    ledger.sample(size(500, 2000), seed=602)  # arrives while halted
    # Nothing is committed past a record whose event TikTok has not taken (committed
    # offsets read first: the accepted set only grows afterwards).
    committed = ledger.committed()
    delivered = accepted_events(pipeline)
    for record in ledger.expected_events:
        if (record.event_id, record.event) not in delivered:
            position = committed[record.topic].get(record.partition, 0)
            assert position <= record.offset, (
                f"{record.topic}[{record.partition}] committed {position}, past the held "
                f"event at offset {record.offset}"
            )
    assert not dead_letter_sources(pipeline)[0], "a bad token must never dead-letter"
    # Rotation: TikTok takes the new token, then the token file is updated.
    sandbox.set_tokens([ROTATED])
    pipeline.token_file.write_text(ROTATED + "\n")
    conclude(ledger, processor, fault_table, fault="token revoked (40105), rotated")
    assert ROTATED not in processor.log()
