"""Pytest fixtures that give integration tests a real Apache Kafka (run by devkit/kafka/).

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
* ``sandbox`` (function, `Sandbox`): the TikTok sandbox on a free port, accepting ``TOKEN``.
* ``make_pipeline`` (function, `MakePipeline`): ``make_pipeline(partitions=3, topic_config=None,
  dead_letter_topic_config=None, **Pipeline options)`` makes the four sample topics, a
  dead-letter topic, a group and a configuration file for one test.
* ``processors`` (function): ``processors(pipeline, *args)`` starts ``tiktok-events run`` as a
  subprocess (`ProcessorProcess`); every one still running is killed after the test.

Producing, consuming and reading committed offsets: the helpers in `devkit.kafka` (`produce`,
`consume`, `consume_all`, `committed_offsets`, `wait_for_topic`).

Tests that use the broker fixtures are marked ``kafka`` (and ``cluster`` for the cluster) here,
so ``pytest -m "not kafka"`` runs without Java, and ``-m "not cluster"`` skips the three nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from devkit.kafka import KafkaCluster, ScramUser, TopicFactory, admin_client, free_port, unique_name
from processor.sandbox import Sandbox
from tests.integration.pipeline import TOKEN, MakePipeline, Pipeline, ProcessorProcess

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


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(tokens=(TOKEN,)) as box:
        yield box


@pytest.fixture
def make_pipeline(
    kafka_bootstrap: str, new_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path
) -> MakePipeline:
    def make(
        partitions: int = 3,
        topic_config: dict[str, str] | None = None,
        dead_letter_topic_config: dict[str, str] | None = None,
        **options: Any,
    ) -> Pipeline:
        topics = {
            kind: new_topic(partitions=partitions, config=topic_config)
            for kind in ("page_view", "button_click", "sign_up", "form_submit")
        }
        return Pipeline(
            bootstrap=kafka_bootstrap,
            topics=topics,
            dead_letter_topic=new_topic(partitions=1, config=dead_letter_topic_config),
            group=unique_name("group"),
            sandbox=sandbox,
            workdir=tmp_path,
            **options,
        )

    return make


@pytest.fixture
def processors(tmp_path: Path) -> Iterator[Callable[..., ProcessorProcess]]:
    started: list[ProcessorProcess] = []

    def start(pipeline: Pipeline, *args: str) -> ProcessorProcess:
        # The first member serves metrics on the pipeline's port, later ones elsewhere.
        port = None if not started else free_port()
        log = tmp_path / f"processor-{len(started)}.log"
        process = ProcessorProcess(pipeline.config_path, log, *args, metrics_port=port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture(scope="module")
def kafka_sasl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A single-node KRaft broker whose client listener requires SASL/SCRAM, for one module.

    ``bootstrap_servers`` is its address, ``client_config`` the librdkafka settings that log in
    (SCRAM-SHA-256; SCRAM-SHA-512 works too) and ``sasl`` the `ScramUser` ("alice", with a
    password no other run uses, so a leak of it cannot be a coincidence). Always local, whatever
    KAFKA_BOOTSTRAP_SERVERS says; tests using it mark themselves ``kafka``.
    """
    user = ScramUser("alice", unique_name("alice-secret"))
    with KafkaCluster(tmp_path_factory.mktemp("kafka-sasl"), nodes=1, sasl=user) as broker:
        yield broker
