"""Kafka fails under the processor: the only broker stopped and restarted while
backpressure has the member paused (the stall case), and one node of the three-node
cluster killed with ``kill -9`` and restarted mid-stream. Each scenario accounts for
every expected event by its ``event_id`` (see ``accounting.py``) and asserts that none
is lost."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from devkit.kafka import KafkaCluster, TopicFactory, admin_client, wait_for_topic
from tests.faults.accounting import (
    SOAK,
    FaultTable,
    Ledger,
    conclude,
    delivered,
    size,
    wait_running,
)
from tests.integration.pipeline import Pipeline, ProcessorProcess

pytestmark = pytest.mark.timeout(3600 if SOAK else 300)

#: How long the broker stays down once the member has noticed: longer than the group's
#: session timeout (10 s) and the stall timeout below.
OUTAGE_S = size(12, 30)


def accepted(pipeline: Pipeline) -> int:
    return int(pipeline.sandbox.stats()["events"]["accepted"])


def junk(seed: int, count: int) -> list[tuple[bytes | None, bytes | None, str]]:
    return [(b"junk", f"\x00not json {seed}-{i}".encode(), "decode") for i in range(count)]


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_the_broker_stopped_and_restarted_while_backpressure_pauses_the_member(
    lone_broker: KafkaCluster,
    pipeline_on: Callable[..., Pipeline],
    processors: Callable[..., ProcessorProcess],
    fault_table: FaultTable,
    protocol: str,
) -> None:
    topics = TopicFactory(lone_broker.bootstrap_servers, prefix="broker-restart")
    pipeline = pipeline_on(
        topics,
        group_protocol=protocol,
        delivery={
            "max_buffered_events": 100,
            "max_batch_events": 25,
            "max_in_flight": 2,
            "stall_timeout_s": 5,
        },
    )
    sandbox = pipeline.sandbox
    sandbox.set_faults("latency=200ms")
    ledger = Ledger(pipeline)
    ledger.sample(size(2000, 10000), seed=301)
    ledger.poison("page_view", junk(301, 5))
    processor = processors(pipeline)
    wait_running(
        processor,
        lambda: pipeline.metric("tiktok_events_paused") == 1,
        60,
        "backpressure pausing the member",
    )
    wait_running(processor, lambda: accepted(pipeline) >= 200, 60, "200 events accepted")
    lone_broker.stop()
    wait_running(
        processor, lambda: pipeline.health("/readyz") == 503, 60, "readiness to fail on the outage"
    )
    # What was buffered still reaches TikTok; none of it can be committed meanwhile.
    wait_running(
        processor,
        lambda: pipeline.metric("tiktok_events_buffered_events") == 0,
        60,
        "the buffered events delivered during the outage",
    )
    time.sleep(OUTAGE_S)
    lone_broker.restart(0)
    ledger.sample(size(1000, 5000), seed=302)
    wait_running(
        processor, lambda: pipeline.health("/readyz") == 200, 90, "readiness after the outage"
    )
    sandbox.set_faults("latency=20ms")
    conclude(
        ledger,
        processor,
        fault_table,
        fault=f"broker down {OUTAGE_S}s, member paused",
        protocol=protocol,
        timeout=180,
    )


def coordinator_index(cluster: KafkaCluster, group: str) -> int:
    """Index (for kill/restart) of the node coordinating ``group``."""
    admin = admin_client(cluster.bootstrap_servers)
    description = admin.describe_consumer_groups([group])[group].result(timeout=15)
    return int(description.coordinator.id) - 1


def test_a_cluster_node_killed_and_restarted_mid_stream_loses_nothing(
    kafka_cluster: KafkaCluster,
    new_cluster_topic: TopicFactory,
    pipeline_on: Callable[..., Pipeline],
    processors: Callable[..., ProcessorProcess],
    fault_table: FaultTable,
) -> None:
    # Every topic, the dead-letter topic too, has three replicas (min.insync.replicas 2).
    pipeline = pipeline_on(new_cluster_topic, delivery={"max_batch_events": 50})
    pipeline.sandbox.set_faults("latency=50ms")
    ledger = Ledger(pipeline)
    ledger.sample(size(3000, 15000), seed=401)
    ledger.poison("page_view", junk(401, 10))
    processor = processors(pipeline)
    third = len(ledger.expected_events) // 3
    wait_running(
        processor, lambda: accepted(pipeline) >= third, 90, "a third of the events accepted"
    )
    # The group's coordinator: commits, and the membership, must move to another node.
    victim = coordinator_index(kafka_cluster, pipeline.group)
    kafka_cluster.kill(victim)
    during = ledger.sample(size(1500, 7500), seed=402)  # acks=all: two replicas in sync
    ledger.poison("button_click", junk(402, 10))
    wait_running(
        processor, lambda: delivered(pipeline, during) >= 300, 90, "delivery with a node down"
    )
    kafka_cluster.restart(victim)
    for topic in [*pipeline.topics.values(), pipeline.dead_letter_topic]:
        wait_for_topic(kafka_cluster.bootstrap_servers, topic, full_isr=True, timeout=60)
    ledger.sample(size(1000, 5000), seed=403)
    conclude(
        ledger,
        processor,
        fault_table,
        fault=f"cluster node {victim + 1} (coordinator) kill -9",
        timeout=180,
    )
