"""Poison records mixed into the stream: bytes that are not JSON, JSON that is not an
object, a tombstone, records that break their topic's schema, an event too old for
TikTok, and a value just under the broker's size limit (above the processor's
``kafka.max_record_bytes``). Every one is dead-lettered, as the record it was (its key,
its value or, for the huge one, a truncated value with the size and SHA-256 of the
whole), and every good event around them is delivered."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import orjson
import pytest

from devkit.kafka import Record
from processor.dlq import header_map
from processor.sandbox import Sandbox
from tests.faults.accounting import (
    SOAK,
    FaultTable,
    Ledger,
    Produced,
    conclude,
    dead_letter_sources,
    size,
)
from tests.integration.pipeline import MakePipeline, ProcessorProcess

pytestmark = pytest.mark.timeout(3600 if SOAK else 300)

#: Below the topic's default max.message.bytes (1,048,588) with the record's overhead,
#: above the processor's kafka.max_record_bytes (1,000,000).
HUGE = 1_040_000
#: The producer's own limit has to be raised to send it.
BIG_PRODUCER = {"message.max.bytes": 2_000_000}


def huge_value() -> bytes:
    block = hashlib.sha256(b"huge").digest() * 32  # 1 KiB
    return (b"\x00" + block * (HUGE // len(block) + 1))[:HUGE]


def broken(record: Produced, **changes: object) -> bytes:
    """A good record's JSON with ``changes`` merged in, and a fresh event id."""
    assert record.value is not None
    document = orjson.loads(record.value) | {"event_id": f"poison-{record.offset}"} | changes
    return orjson.dumps(document)


def poison_round(ledger: Ledger, good: list[Produced], round_: int) -> None:
    """Poison records of every kind, between good ones."""
    by_kind = {
        kind: next(r for r in good if r.topic == topic and r.event)
        for kind, topic in ledger.pipeline.topics.items()
    }
    stale = time.time() - 40 * 86400  # older than delivery.max_event_age (28 days)
    ledger.poison(
        "page_view",
        [
            (b"not-json", f"\x00not json {round_}".encode(), "decode"),
            (b"cut-json", b'{"event_id": "cut", "type": "page_v', "decode"),
            (b"array", f"[{round_}, 2, 3]".encode(), "decode"),
            (b"tombstone", None, "decode"),
            (b"bad-url", broken(by_kind["page_view"], page={"url": 12}), "input-schema"),
            (b"stale", broken(by_kind["page_view"], timestamp=int(stale * 1000)), "stale"),
        ],
    )
    ledger.poison(
        "sign_up", [(b"bad-signup", broken(by_kind["sign_up"], signup="email"), "input-schema")]
    )
    ledger.poison(
        "button_click",
        [(b"bad-button", broken(by_kind["button_click"], button="tap"), "input-schema")],
    )
    ledger.poison(
        "form_submit", [(b"bad-form", broken(by_kind["form_submit"], form=[1]), "input-schema")]
    )


def test_poison_records_are_dead_lettered_as_records_and_every_good_event_delivered(
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
    fault_table: FaultTable,
) -> None:
    pipeline = make_pipeline(partitions=2)
    ledger = Ledger(pipeline)
    rounds = size(3, 10)
    for round_ in range(rounds):
        good = ledger.sample(size(800, 3000), seed=800 + round_)
        poison_round(ledger, good, round_)
    huge = ledger.poison("page_view", [(b"huge", huge_value(), "decode")], config=BIG_PRODUCER)
    ledger.sample(size(800, 3000), seed=899)
    processor = processors(pipeline)
    row = conclude(ledger, processor, fault_table, fault="poison records mixed in")
    assert row.dead_lettered == len(ledger.poisoned)

    _, letters = dead_letter_sources(pipeline)
    by_source: dict[tuple[str, int, int], Record] = {}
    for letter in letters:
        headers = header_map(letter.headers)
        source = (
            headers["dlq.source.topic"],
            int(headers["dlq.source.partition"]),
            int(headers["dlq.source.offset"]),
        )
        by_source[source] = letter
    assert set(by_source) == {r.source for r in ledger.poisoned}
    for record in ledger.poisoned:
        letter = by_source[record.source]
        headers = header_map(letter.headers)
        assert headers["dlq.stage"] == record.poison, (record, headers)
        assert letter.key == record.key
        if record in huge:
            assert record.value is not None
            assert headers["dlq.value.truncated"] == "true"
            assert headers["dlq.value.bytes"] == str(HUGE)
            assert headers["dlq.value.sha256"] == hashlib.sha256(record.value).hexdigest()
            assert letter.value is not None
            assert record.value.startswith(letter.value)
            assert headers["dlq.reason"].startswith(f"record value is {HUGE:,} bytes")
        elif record.value is None:
            assert not letter.value  # a tombstone's letter has no value either
        else:
            assert letter.value == record.value
            assert "dlq.value.truncated" not in headers
