"""A stalled partition is never silent: on a real broker, a partition that stops being
fetched for a reason the processor does not know of (here: paused in the Kafka client
behind its back, as the rebalance bug once left partitions) turns ``/readyz`` red, names
itself, and shows in ``tiktok_events_partition_stalled_seconds`` above the alert's
threshold; when it flows again, everything is delivered and readiness recovers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from devkit.kafka import produce
from processor.kafka.consumer import KafkaSource
from processor.loop import Processor
from processor.metrics import Metrics
from processor.sample import generate
from processor.service.worker import build_member
from processor.transform import load_pipeline
from tests.integration.pipeline import MakePipeline, wait_for

STALL_TIMEOUT_S = 4


class BehindTheBack:
    """Runs calls on the processor's own Kafka consumer, around its back on purpose, on
    its poll thread (a Kafka consumer blocks when another thread calls it while it
    consumes): each call runs just before the loop's next consume()."""

    def __init__(self, processor: Processor) -> None:
        source = processor._source
        assert isinstance(source, KafkaSource)
        self.consumer: Consumer = source._consumer
        self._calls: list[Callable[[], None]] = []
        self._done = threading.Event()
        consume = source.consume

        def consume_after_calls(max_records: int, timeout: float) -> list[Any]:
            while self._calls:
                self._calls.pop(0)()
                self._done.set()
            return consume(max_records, timeout)

        source.consume = consume_after_calls  # type: ignore[method-assign]

    def run(self, call: Callable[[], None]) -> None:
        self._done.clear()
        self._calls.append(call)
        assert self._done.wait(30), "the poll loop did not turn"


def test_a_partition_paused_behind_the_processors_back_fails_readiness_and_shows_stalled(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline(partitions=2, delivery={"stall_timeout_s": STALL_TIMEOUT_S})
    config, transformer, _ = load_pipeline(
        pipeline.config_path, clock=time.time, require_token=True
    )
    metrics = Metrics()
    member = build_member(config, transformer, metrics)
    processor = member.processor
    behind = BehindTheBack(processor)
    thread = threading.Thread(target=member.run, name="processor-under-test")
    thread.start()
    try:
        _, expected = pipeline.sample(200, seed=3)
        pipeline.wait_delivered(expected)
        wait_for(lambda: processor.ready[0], 30, "the processor ready")

        topic = pipeline.topics["page_view"]
        stuck = KafkaTopicPartition(topic, 0)
        behind.run(lambda: behind.consumer.pause([stuck]))
        records, _ = generate(300, seed=4, start=time.time() - 60, topics=pipeline.topics)
        page_views = [r for r in records if r.topic == topic]
        produce(pipeline.bootstrap, topic, [(r.key, r.value) for r in page_views], partition=0)

        try:
            wait_for(lambda: not processor.ready[0], 90, "readiness to fail on the stall")
        except AssertionError as exc:
            state = {
                "ready": processor.ready,
                "lag": metrics.value("consumer_lag", {"topic": topic, "partition": "0"}),
                "stalled": metrics.value(
                    "partition_stalled_seconds", {"topic": topic, "partition": "0"}
                ),
            }
            raise AssertionError(f"{exc}: {state}") from None
        _, reason = processor.ready
        assert reason.startswith(f"stalled: partition {topic}[0] has lag ")
        stalled = metrics.value("partition_stalled_seconds", {"topic": topic, "partition": "0"})
        assert stalled >= STALL_TIMEOUT_S
        assert metrics.value("partition_stalled_seconds", {"topic": topic, "partition": "1"}) == 0
        lag = metrics.value("consumer_lag", {"topic": topic, "partition": "0"})
        assert lag >= len(page_views)

        behind.run(lambda: behind.consumer.resume([stuck]))
        pipeline.wait_delivered(
            expected + Counter(r.expected_event for r in page_views if r.expected_event)
        )
        wait_for(lambda: processor.ready[0], 60, "readiness to recover")
        assert metrics.value("partition_stalled_seconds", {"topic": topic, "partition": "0"}) == 0
    finally:
        processor.request_stop()
        thread.join(60)
    assert not thread.is_alive()
