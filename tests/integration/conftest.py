"""Pytest fixtures that give integration tests a real Apache Kafka (run by devkit/kafka.py).

Fixtures:

* ``kafka_bootstrap`` (session, str): bootstrap servers of a real broker. The broker named by
  the environment variable KAFKA_BOOTSTRAP_SERVERS when it is set (e.g. the `make kafka-up`
  broker, or a shared one); otherwise a single-node KRaft broker started in a temporary
  directory for the session and stopped at its end.
* ``new_topic`` (function, `TopicFactory`): ``new_topic(partitions=1, replication_factor=1,
  config=None) -> str`` creates a uniquely named topic on ``kafka_bootstrap``, waits until every
  partition has a leader, and deletes it after the test.
* ``group_id`` (function, str): a fresh consumer group id.
* ``kafka_cluster`` (function, `KafkaCluster`): a three-node KRaft cluster (replication factor 3,
  min.insync.replicas 2) with ``bootstrap_servers``, ``kill(index)`` (SIGKILL) and
  ``restart(index)``. One cluster serves the whole session; nodes a test left killed are
  restarted before the next test. Always local, whatever KAFKA_BOOTSTRAP_SERVERS says.
* ``new_cluster_topic`` (function, `TopicFactory`): like ``new_topic`` on ``kafka_cluster``, with
  a default replication factor of 3.

Producing, consuming and reading committed offsets: the helpers in `devkit.kafka` (`produce`,
`consume`, `consume_all`, `committed_offsets`, `wait_for_topic`).

Tests that use the broker fixtures are marked ``kafka`` (and ``cluster`` for the cluster) here,
so ``pytest -m "not kafka"`` runs without Java, and ``-m "not cluster"`` skips the three nodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaException

from devkit.kafka import KafkaCluster, TopicFactory, admin_client, unique_name

_BROKER_FIXTURES = frozenset({"kafka_bootstrap", "new_topic", "kafka_cluster", "new_cluster_topic"})
_CLUSTER_FIXTURES = frozenset({"kafka_cluster", "new_cluster_topic"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _BROKER_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if fixtures & _CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker for the whole test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        try:
            admin_client(external).list_topics(timeout=15)
        except KafkaException as exc:
            pytest.fail(
                f"KAFKA_BOOTSTRAP_SERVERS={external} is set but no broker answers there: {exc}",
                pytrace=False,
            )
        yield external
        return
    with KafkaCluster(tmp_path_factory.mktemp("kafka"), nodes=1) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def new_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """``new_topic(partitions=1, replication_factor=1, config=None) -> str`` on the broker."""
    factory = TopicFactory(kafka_bootstrap, prefix=request.node.name)
    yield factory
    factory.cleanup()


@pytest.fixture
def group_id(request: pytest.FixtureRequest) -> str:
    """A consumer group id no other test uses."""
    return unique_name(f"group-{request.node.name}")


@pytest.fixture(scope="session")
def kafka_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """The three-node cluster, started once: use `kafka_cluster`, which also heals it."""
    with KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), nodes=3) as cluster:
        yield cluster


@pytest.fixture
def kafka_cluster(kafka_cluster_session: KafkaCluster) -> Iterator[KafkaCluster]:
    """A three-node KRaft cluster whose nodes the test may `kill` and `restart`.

    Every node runs when the test starts; nodes it leaves killed are restarted afterwards.
    """
    kafka_cluster_session.heal()
    yield kafka_cluster_session
    kafka_cluster_session.heal()


@pytest.fixture
def new_cluster_topic(
    kafka_cluster: KafkaCluster, request: pytest.FixtureRequest
) -> Iterator[TopicFactory]:
    """``new_cluster_topic(partitions=1, replication_factor=3, config=None) -> str``."""
    factory = TopicFactory(
        kafka_cluster.bootstrap_servers, prefix=request.node.name, replication_factor=3
    )
    yield factory
    factory.cleanup()
