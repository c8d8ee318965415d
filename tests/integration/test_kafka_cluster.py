"""Proof that the three-node KRaft cluster of devkit/kafka/ survives a crashed node.

With replication factor 3, min.insync.replicas 2, acks=all and an idempotent producer, a node
killed with SIGKILL while records stream in must not lose a single acknowledged record, and the
cluster must keep accepting writes while the node is down.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from confluent_kafka import KafkaError, Message, Producer

from devkit.kafka import KafkaCluster, TopicFactory, consume_all, wait_for_topic

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_no_acknowledged_record_is_lost_when_a_node_is_killed(
    kafka_cluster: KafkaCluster, new_cluster_topic: TopicFactory
) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    topic = new_cluster_topic(partitions=3, replication_factor=3, config={"min.insync.replicas": 2})
    # Kill the leader of partition 0, so the test covers a leader failover and not only a
    # follower dropping out of the ISR. Node ids are index + 1.
    victim = wait_for_topic(bootstrap, topic, full_isr=True)[0].leader - 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    acknowledged: set[bytes] = set()
    failures: list[str] = []
    # Delivery reports are served by producer.poll() in this thread, so `phase` is the phase
    # in which a record was acknowledged.
    phase = "before"
    acknowledged_in: Counter[str] = Counter()

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(str(error))
        elif (value := message.value()) is not None:
            acknowledged.add(value)
            acknowledged_in[phase] += 1

    sent = 0

    def produce_for(seconds: float, new_phase: str) -> None:
        nonlocal sent, phase
        phase = new_phase
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            producer.produce(
                topic, key=f"user-{sent % 100}", value=f"{phase}-{sent}", on_delivery=on_delivery
            )
            sent += 1
            producer.poll(0.002)  # Serves delivery reports and paces us at a few hundred/s.

    produce_for(2, "before")
    kafka_cluster.kill(victim)
    assert not kafka_cluster.is_running(victim)
    # Longer than broker.session.timeout.ms (4 s): the dead leader gets fenced and replaced
    # while we keep producing.
    produce_for(7, "degraded")
    kafka_cluster.restart(victim)
    produce_for(2, "after")
    assert producer.flush(60) == 0, "records still unacknowledged after 60 s"

    # The restarted node catches up and rejoins the ISR of every partition.
    wait_for_topic(bootstrap, topic, full_isr=True, timeout=60)
    stored = [record.value for record in consume_all(bootstrap, topic)]

    assert failures == [], f"{len(failures)} deliveries failed, e.g. {failures[:3]}"
    assert len(acknowledged) == sent
    lost = acknowledged - set(stored)
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:5]}"
    duplicates = [value for value, count in Counter(stored).items() if count > 1]
    assert not duplicates, f"idempotent producer wrote duplicates, e.g. {duplicates[:5]}"
    assert acknowledged_in["degraded"] > 0, "no write was acknowledged while the node was down"
    assert acknowledged_in["before"] > 0
