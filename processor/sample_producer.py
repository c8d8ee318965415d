"""``produce-sample``: realistic clickstream onto Kafka, for the demo, benchmarks and
users testing their own deployment.

Creates the topics when they are missing, produces at a target rate, and
returns the per-event counts that ``config/example.yaml`` should deliver.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processor.sample import ClickstreamGenerator, SampleRecord


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(settings or {})})
    existing = set(admin.list_topics(timeout=15).topics)
    missing = [NewTopic(t, num_partitions=partitions) for t in topics if t not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing, operation_timeout=15).items():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {topic}: {exc}") from None


def produce_sample(
    bootstrap: str,
    records: Sequence[SampleRecord],
    *,
    rate: float = 0.0,
    settings: Mapping[str, Any] | None = None,
) -> int:
    """Produce ``records`` (keyed by anonymous id) at ``rate`` records/s (0: as fast as
    possible); returns how many the broker acknowledged."""
    acknowledged = 0
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1
        else:
            failures.append(str(error))

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all", **(settings or {})}
    )
    started = time.monotonic()
    for i, record in enumerate(records):
        if rate > 0:
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                producer.poll(wait)
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    if failures or remaining:
        raise RuntimeError(
            f"{len(failures) + remaining} records were not acknowledged"
            + (f": {failures[0]}" if failures else "")
        )
    return acknowledged


def generate(
    count: int, *, seed: int, start: float, topics: Mapping[str, str] | None = None
) -> tuple[list[SampleRecord], Counter[str]]:
    """``count`` sample records and the per-event counts they should become."""
    records = list(
        ClickstreamGenerator(seed=seed, start=start, topics=dict(topics or {})).records(count)
    )
    expected = Counter(r.expected_event for r in records if r.expected_event is not None)
    return records, expected
