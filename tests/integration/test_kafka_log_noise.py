"""A broker outage as the logs show it: the processor's real Kafka clients (consumer, lag
probe, dead-letter producer) against a port nothing listens on. librdkafka fails a
connection every few tens of milliseconds; the log must say so once as an error (the
pipeline's "Kafka unreachable") and once per broker as a warning, not hundreds of times.
No broker needed."""

from __future__ import annotations

import logging
import time

import pytest

from devkit.kafka import free_port
from processor.config import KafkaConfig
from processor.kafka.api import TopicPartition
from processor.kafka.consumer import KafkaSource
from processor.kafka.producer import dead_letter_producer
from processor.logs import LIBRDKAFKA_LOGGER
from processor.metrics import Metrics


class Ignored:
    """A rebalance listener for a member that never gets partitions."""

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_commit_failed(self, partitions: list[TopicPartition], reason: str) -> None:
        pass


def test_an_outage_logs_one_error_and_one_warning_per_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="processor")
    port = free_port()  # a broker of its own: the process-wide filter has not seen it
    kafka = KafkaConfig(f"127.0.0.1:{port}", "log-noise", dead_letter_topic="dlq")
    metrics = Metrics()
    source = KafkaSource(kafka, ["clicks"], metrics)
    producer = dead_letter_producer(kafka)
    try:
        source.subscribe(Ignored())
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            source.consume(100, 0.1)
            producer.poll(0)
    finally:
        source.close()
        producer.flush(0)

    # The flood happened: librdkafka reported every failed connection to the callback.
    assert metrics.value("kafka_errors_total", {"kind": "transport"}) >= 10
    ours = [r for r in caplog.records if r.name.startswith("processor")]
    errors = [r.getMessage() for r in ours if r.levelno >= logging.ERROR]
    assert errors == ["Kafka unreachable: 1/1 brokers are down"]
    kafka_lines = [r for r in ours if r.name == LIBRDKAFKA_LOGGER and str(port) in r.getMessage()]
    refused = [r for r in kafka_lines if "Connection refused" in r.getMessage()]
    assert [r.levelname for r in refused] == ["WARNING"]
    assert f"Connect to ipv4#127.0.0.1:{port} failed" in refused[0].getMessage()
    assert all(r.levelno <= logging.WARNING for r in kafka_lines)
