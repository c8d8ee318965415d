"""The Kafka producers: the dead-letter producer, and producing sample clickstream.

:class:`DeadLetterProducer` puts librdkafka's errors in the project's own terms
(:class:`processor.errors.DeadLetterWriteError`); :func:`ensure_topics` and
:func:`produce_sample` serve ``produce-sample``, the demo and the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from processor.config import KafkaConfig
from processor.errors import DeadLetterWriteError, KafkaClientError
from processor.kafka.settings import producer_settings
from processor.logs import librdkafka_logger
from processor.sample import SampleRecord


def dead_letter_producer(kafka: KafkaConfig) -> Producer:
    """An idempotent producer with acks=all: a dead letter is acknowledged only once
    it is replicated, and retries never duplicate it."""
    # Its librdkafka lines go through logging too (JSON lines stay JSON lines).
    return Producer(producer_settings(kafka), logger=librdkafka_logger())


#: Broker and producer codes that refuse a message for its size: a smaller one may pass.
_SIZE_ERRORS: Final = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)


def _write_error(error: KafkaError) -> DeadLetterWriteError:
    return DeadLetterWriteError(
        f"{error.name()}: {error.str()}", too_large=error.code() in _SIZE_ERRORS
    )


class DeadLetterProducer:
    """The dead-letter producer with librdkafka's errors in the project's own terms
    (:class:`processor.dlq.Producer`): ``BufferError`` while the queue is full,
    :class:`DeadLetterWriteError` for a letter it cannot queue or the broker refused."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Callable[[DeadLetterWriteError | None], None],
    ) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            on_delivery(None if error is None else _write_error(error))

        wire: list[tuple[str, str | bytes | None]] = list(headers)
        try:
            self._producer.produce(topic, value=value, key=key, headers=wire, on_delivery=delivered)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError):
                raise _write_error(error) from exc
            raise DeadLetterWriteError(str(exc)) from exc

    def poll(self, timeout: float = 0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for outstanding letters; how many are left."""
        return self._producer.flush(timeout)


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
                raise KafkaClientError(f"cannot create topic {topic}: {exc}") from None


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
        raise KafkaClientError(
            f"{len(failures) + remaining} records were not acknowledged"
            + (f": {failures[0]}" if failures else "")
        )
    return acknowledged
