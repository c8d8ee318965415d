"""Proof that the local Kafka of devkit/kafka/ is a real broker with the semantics we rely on.

Records round-trip intact, consumer groups resume exactly at their committed offsets with both
the classic protocol and KIP-848's `group.protocol=consumer`, and fetching the jars is cached.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupType

from devkit import kafka
from devkit.kafka import (
    ProduceRecord,
    TopicFactory,
    admin_client,
    committed_offsets,
    consume,
    produce,
)

pytestmark = pytest.mark.timeout(120)


def test_round_trip_preserves_keys_values_and_headers(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    topic = new_topic()
    records: list[ProduceRecord] = [
        (b"user-1", b'{"event":"ViewContent"}', [("trace-id", b"abc"), ("source", b"web")]),
        (None, b"no key", []),
        # Repeated header names keep their order; a header may have no value.
        (b"user-2", b"", [("dup", b"1"), ("dup", b"2"), ("empty", None)]),
        ("clé-ü", "valeur ✓".encode(), [("content-type", "application/json")]),
        (b"\x00\xff", bytes(range(256)), []),
        (b"tombstone", None, []),
    ]

    positions = produce(kafka_bootstrap, topic, records)
    received = consume(kafka_bootstrap, topic, len(records))

    # One partition: offsets follow the produce order, and so do the consumed records.
    assert positions == [(0, offset) for offset in range(len(records))]
    assert [(r.partition, r.offset) for r in received] == positions
    assert [(r.key, r.value, r.headers) for r in received] == [
        (b"user-1", b'{"event":"ViewContent"}', (("trace-id", b"abc"), ("source", b"web"))),
        (None, b"no key", ()),
        (b"user-2", b"", (("dup", b"1"), ("dup", b"2"), ("empty", None))),
        ("clé-ü".encode(), "valeur ✓".encode(), (("content-type", b"application/json"),)),
        (b"\x00\xff", bytes(range(256)), ()),
        (b"tombstone", None, ()),
    ]
    assert all(r.topic == topic and r.timestamp_ms > 0 for r in received)


@pytest.mark.parametrize(
    ("protocol", "group_type"),
    [
        ("classic", ConsumerGroupType.CLASSIC),
        # KIP-848: the broker-side rebalance protocol the processor may use.
        ("consumer", ConsumerGroupType.CONSUMER),
    ],
)
def test_group_member_resumes_exactly_from_committed_offsets(
    kafka_bootstrap: str,
    new_topic: TopicFactory,
    group_id: str,
    protocol: str,
    group_type: ConsumerGroupType,
) -> None:
    topic = new_topic(partitions=3)
    values = [f"value-{i}".encode() for i in range(30)]
    records: list[ProduceRecord] = [(f"key-{i}", value) for i, value in enumerate(values)]
    positions = produce(kafka_bootstrap, topic, records)
    log_end = {p: 1 + max(o for q, o in positions if q == p) for p, _ in positions}
    config: dict[str, Any] = {"group.protocol": protocol}

    # First member: reads 12 records, commits after the last one, closes (leaves the group).
    first = consume(kafka_bootstrap, topic, 12, group_id=group_id, commit=True, config=config)

    expected_commit: dict[int, int] = {}
    for record in first:
        expected_commit[record.partition] = max(
            expected_commit.get(record.partition, 0), record.offset + 1
        )
    assert committed_offsets(kafka_bootstrap, group_id, topic) == expected_commit
    admin = admin_client(kafka_bootstrap)
    described = admin.describe_consumer_groups([group_id])[group_id].result(timeout=10)
    assert described.type == group_type

    # Second member of the same group: gets the other 18 records, from the commit on.
    second = consume(kafka_bootstrap, topic, 18, group_id=group_id, commit=True, config=config)

    first_values = [r.value for r in first]
    second_values = [r.value for r in second]
    assert not set(first_values) & set(second_values), "committed records were read again"
    assert Counter(first_values + second_values) == Counter(values), "records skipped or doubled"
    for partition in {r.partition for r in second}:
        resumed_at = min(r.offset for r in second if r.partition == partition)
        assert resumed_at == expected_commit.get(partition, 0)
    assert committed_offsets(kafka_bootstrap, group_id, topic) == log_end


@pytest.mark.kafka
def test_fetch_runs_maven_once_then_uses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache of its own, so the first call must run Maven (quick once the local Maven
    # repository holds the jars) and the project's cache is left alone.
    first = kafka.fetch(cache_dir=tmp_path)
    assert first.downloaded
    assert (first.libs_dir / f"kafka_2.13-{first.version}.jar").is_file()
    assert (first.libs_dir / f"kafka-clients-{first.version}.jar").is_file()

    def no_command(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError(f"fetch ran {args} although the jars are cached")

    monkeypatch.setattr(subprocess, "run", no_command)
    started = time.monotonic()
    second = kafka.fetch(cache_dir=tmp_path)
    elapsed = time.monotonic() - started

    assert not second.downloaded
    assert second.libs_dir == first.libs_dir
    assert elapsed < 0.5
