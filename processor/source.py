"""The Kafka side: the consumer group member and the dead-letter producer.

One :class:`Source` is one member of the consumer group. Offsets are never
committed automatically: the pipeline commits the contiguous done watermark
itself (see :mod:`processor.offsets`). With the classic protocol the member uses
the cooperative-sticky assignor, so a rebalance only moves the partitions that
must move (KIP-429); with ``group.protocol=consumer`` (KIP-848, Kafka ≥ 4.0) the
broker drives incremental assignment. Either way the rebalance callbacks run on
the poll thread, inside :meth:`Source.consume`, and confluent-kafka performs the
incremental assign/unassign after they return.

Only this module imports ``confluent_kafka``. Not thread-safe: owned by the
poll thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition

from processor.config import KafkaConfig
from processor.offsets import TopicPartition

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]

#: How often the lag of paused partitions is asked of the broker, seconds.
PAUSED_LAG_INTERVAL_S = 10.0

__all__ = ["KafkaError", "Message", "Source", "dead_letter_producer", "message_headers"]


def consumer_settings(
    kafka: KafkaConfig, *, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """librdkafka settings of a processor consumer (pass-through settings win)."""
    settings: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group_id,
        "client.id": kafka.client_id,
        # Offsets are committed by the pipeline, only once records are done.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "group.protocol": kafka.group_protocol,
    }
    if kafka.group_protocol == "classic":
        settings["partition.assignment.strategy"] = "cooperative-sticky"
        # A crashed member's partitions move after 10 s, not librdkafka's 45 s; a member
        # that leaves in the middle of a join holds the group up for this long too.
        settings["session.timeout.ms"] = 10_000
    settings.update(kafka.librdkafka_settings())
    settings.update(extra or {})
    return settings


def dead_letter_producer(kafka: KafkaConfig) -> Producer:
    """An idempotent producer with acks=all: a dead letter is acknowledged only once
    it is replicated, and retries never duplicate it."""
    settings: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": f"{kafka.client_id}-dlq",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
    }
    settings.update(kafka.librdkafka_settings())
    # Its librdkafka lines go through logging too (JSON lines stay JSON lines).
    return Producer(settings, logger=log)


def message_headers(message: Message) -> list[tuple[str, bytes | None]]:
    """A message's headers as a list of (name, bytes) pairs."""
    raw = message.headers()
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


def _ours(partitions: Sequence[KafkaTopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in partitions]


class Source:
    """A consumer group member reading ``topics``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_commit_failed: Callable[[list[TopicPartition], str], None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self._topics = list(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._on_commit_failed = on_commit_failed
        settings = consumer_settings(kafka, extra=extra)
        settings["on_commit"] = self._committed
        self._consumer = Consumer(settings, logger=log)
        self._paused: set[TopicPartition] = set()
        self._assigned: set[TopicPartition] = set()
        self.paused = False
        self._commit_results = 0
        self._last_commit_ok = True
        self._paused_lag_at = 0.0
        self._last_lag: dict[TopicPartition, int] = {}

    def subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics,
            on_assign=self._assigned_cb,
            on_revoke=self._revoked_cb,
            on_lost=self._lost_cb,
        )

    # Rebalance callbacks: librdkafka calls them from consume(), on this thread.
    def _assigned_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._assigned.update(tps)
        self._on_assign(tps)
        if self.paused and partitions:
            # Newly assigned partitions inherit the member's backpressure.
            self._consumer.pause(partitions)
            self._paused.update(tps)

    def _revoked_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._on_revoke(tps)
        self._assigned.difference_update(tps)
        self._paused.difference_update(tps)

    def _lost_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._on_lost(tps)
        self._assigned.difference_update(tps)
        self._paused.difference_update(tps)

    def _committed(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        self._commit_results += 1
        self._last_commit_ok = error is None and not failed
        if (error is not None or failed) and self._on_commit_failed is not None:
            reason = str(error) if error is not None else str(failed[0].error)
            self._on_commit_failed(_ours(failed or partitions), reason)

    def consume(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` messages (errors included: check ``message.error()``)."""
        return self._consumer.consume(num_messages=max_records, timeout=timeout)

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause_all(self) -> None:
        """Stop fetching on every assigned partition; consume() keeps the membership alive."""
        self.paused = True
        targets = [KafkaTopicPartition(tp.topic, tp.partition) for tp in self._assigned]
        if targets:
            self._consumer.pause(targets)
            self._paused.update(self._assigned)

    def resume_all(self) -> None:
        self.paused = False
        targets = [KafkaTopicPartition(tp.topic, tp.partition) for tp in self._paused]
        if targets:
            self._consumer.resume(targets)
        self._paused.clear()

    def commit(self, positions: Mapping[TopicPartition, int], *, asynchronous: bool) -> bool:
        """Commit ``positions`` (the next offset to read per partition)."""
        if not positions:
            return True
        offsets = [
            KafkaTopicPartition(tp.topic, tp.partition, pos) for tp, pos in positions.items()
        ]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return True
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            # Nothing to commit is not a failure: the broker already has it.
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                return True
            log.warning("offset commit failed: %s", error)
            return False
        return all(p.error is None for p in result or [])

    def commit_and_serve(self, positions: Mapping[TopicPartition, int], timeout: float) -> bool:
        """Commit asynchronously and keep serving the consumer until the broker answers.

        For the final commit of a stop: a synchronous commit made while a rebalance is
        pending blocks until the session times out, because nobody polls; polling here
        lets the group protocol (and its callbacks) go on. Records fetched meanwhile are
        dropped unprocessed: they are past the committed positions, so nothing is lost.
        """
        if not positions:
            return True
        before = self._commit_results
        if not self.commit(positions, asynchronous=True):
            return False
        deadline = time.monotonic() + timeout
        while self._commit_results == before and time.monotonic() < deadline:
            self._consumer.consume(num_messages=100, timeout=0.05)
        return self._commit_results > before and self._last_commit_ok

    def serve(self, timeout: float) -> None:
        """Poll without processing (rebalance and commit callbacks run); fetched records
        are dropped. Only while stopping, with every partition paused."""
        self._consumer.consume(num_messages=100, timeout=timeout)

    def lag(self) -> dict[TopicPartition, int]:
        """High watermark minus position. Fetched partitions use the watermark cached
        from fetch responses (no broker call); paused ones fetch nothing, so their
        watermark is asked of the broker, at most every ``PAUSED_LAG_INTERVAL_S``,
        or the lag would stand still exactly when it grows."""
        out: dict[TopicPartition, int] = {}
        now = time.monotonic()
        ask_broker = bool(self._paused) and now - self._paused_lag_at >= PAUSED_LAG_INTERVAL_S
        if ask_broker:
            self._paused_lag_at = now
        tps = [KafkaTopicPartition(tp.topic, tp.partition) for tp in self._assigned]
        if not tps:
            return out
        try:
            positions = self._consumer.position(tps)
        except KafkaException:
            return out
        for p in positions:
            tp = TopicPartition(p.topic, p.partition)
            if tp in self._paused and not ask_broker:
                if tp in self._last_lag:
                    out[tp] = self._last_lag[tp]
                continue
            try:
                if tp in self._paused:
                    _low, high = self._consumer.get_watermark_offsets(p, timeout=1.0, cached=False)
                else:
                    _low, high = self._consumer.get_watermark_offsets(p, cached=True)
            except KafkaException:
                continue
            if high >= 0 and p.offset != OFFSET_INVALID and p.offset >= 0:
                out[tp] = max(0, high - p.offset)
        self._last_lag = out
        return out

    def close(self) -> None:
        """Leave the group (runs the revoke callback for what is still assigned)."""
        self._consumer.close()
