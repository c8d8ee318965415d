"""Reading the newest records of a live topic, without joining its consumer group.

:func:`newest_records` is how ``match-report`` sees what a topic holds: a consumer
that is assigned the partitions by hand (it never subscribes, so the group does not
rebalance), starts each partition the same share of records before its log end, and
reads up to those ends. It commits nothing (``enable.auto.commit`` is off and it never
calls commit), so the processor's group is left exactly as it was.
"""

from __future__ import annotations

import time
from typing import Final

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from processor.config import KafkaConfig
from processor.errors import KafkaClientError
from processor.kafka.api import Record
from processor.kafka.settings import consumer_settings
from processor.logs import librdkafka_logger

#: How long one question to the broker (metadata, watermarks) may take, seconds.
ASK_TIMEOUT_S: Final = 10.0


def newest_records(kafka: KafkaConfig, topic: str, count: int, timeout_s: float) -> list[Record]:
    """Up to ``count`` of the newest records of ``topic``, spread over its partitions
    (a partition with fewer gives what it has), read within ``timeout_s``. Raises
    :class:`KafkaClientError` when the topic does not exist or the broker does not
    answer."""
    settings = consumer_settings(kafka)
    settings["client.id"] = f"{kafka.client_id}-match-report"
    consumer = Consumer(settings, logger=librdkafka_logger())
    try:
        return _read(consumer, topic, count, timeout_s)
    except KafkaException as exc:
        raise KafkaClientError(f"{topic}: {exc.args[0]}") from None
    finally:
        consumer.close()  # never subscribed: leaves no group, commits nothing


def _read(consumer: Consumer, topic: str, count: int, timeout_s: float) -> list[Record]:
    metadata = consumer.list_topics(topic, timeout=ASK_TIMEOUT_S)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        reason = described.error.str() if described is not None and described.error else ""
        raise KafkaClientError(f"topic {topic!r} does not exist or has no partitions {reason}")
    ranges: dict[int, tuple[int, int]] = {}
    for partition in sorted(described.partitions):
        low, high = consumer.get_watermark_offsets(
            KafkaTopicPartition(topic, partition), timeout=ASK_TIMEOUT_S, cached=False
        )
        if high > low:
            ranges[partition] = (low, high)
    starts = _starts(ranges, count)
    if not starts:
        return []
    consumer.assign([KafkaTopicPartition(topic, p, starts[p]) for p in starts])
    ends = {p: ranges[p][1] for p in starts}
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while ends and len(records) < count and time.monotonic() < deadline:
        for message in consumer.consume(500, timeout=0.5):
            if message.error() is not None:
                continue
            partition, offset = message.partition(), message.offset()
            if partition not in ends or offset is None or offset >= ends[partition]:
                continue
            kind, stamp = message.timestamp()
            records.append(
                Record(
                    topic,
                    partition,
                    offset,
                    message.value(),
                    message.key(),
                    None,
                    stamp / 1000.0 if kind and stamp > 0 else None,
                )
            )
            if offset + 1 >= ends[partition]:
                del ends[partition]
    return records[:count]


def _starts(ranges: dict[int, tuple[int, int]], count: int) -> dict[int, int]:
    """Where each partition starts so that together they give ``count`` records (or all
    they hold): an equal share each, a short partition's remainder spread over the rest."""
    left = count
    share: dict[int, int] = {}
    waiting = dict(sorted(ranges.items(), key=lambda kv: kv[1][1] - kv[1][0]))
    while waiting and left > 0:
        each = max(1, left // len(waiting))
        partition, (low, high) = next(iter(waiting.items()))
        take = min(high - low, each)
        share[partition] = take
        left -= take
        del waiting[partition]
    return {p: ranges[p][1] - n for p, n in share.items() if n > 0}
