"""A real Apache Kafka on this machine for development, tests and CI, without Docker.

Everything callers use is importable from here (``from devkit.kafka import KafkaCluster,
produce``). Each module below owns one part; a module imports only modules to its right on
its row, so the arrows point one way::

    cli ─► devbroker ─► broker ─► jvm ─► jars ─► errors
                           └─► ports ──────────► errors
    clients ───────────────────────────────────► errors

(cli also reads jars and ports directly.) jars, jvm, broker and devbroker run and stop
programs through `devkit.proc`, which devkit.helm and devkit.promtool share.

* `devkit.kafka.jars`: the pinned version (`kafka_version`, read from dev/kafka/pom.xml) and
  `fetch()`, which runs Maven once and caches the broker jars in .cache/kafka/libs-<version>/;
  a marker file makes every later call a no-op (`fetched_libs_dir`, `FetchResult`);
* `devkit.kafka.jvm`: finding a Java 17+ (`java_executable`) and the JVM command line that runs
  a Kafka main class;
* `devkit.kafka.ports`: free listener ports on 127.0.0.1 (`free_port`, `HOST`);
* `devkit.kafka.broker`: `KafkaCluster` writes server.properties for combined
  broker+controller KRaft nodes (`KafkaNode`), formats their storage and runs them. One node is
  the development/test broker; three nodes (replication factor 3, min.insync.replicas 2) are
  the failover cluster whose nodes tests can `kill` (SIGKILL) and `restart`. With
  ``sasl=ScramUser(name, password)`` clients must authenticate with SASL/SCRAM;
* `devkit.kafka.devbroker`: the long-running development broker of `make kafka-up` /
  `make kafka-down` (`broker_up`, `broker_down`), with its state in .cache/kafka/run/, and
  `running_broker()` / `running_bootstrap()` so the demo and other code can find it;
* `devkit.kafka.clients`: small client helpers shared by tests and scripts: `admin_client`,
  `create_topic`, `wait_for_topic`, `delete_topics`, `TopicFactory`, `unique_name`, `produce`,
  `consume`, `consume_all`, `committed_offsets`, and the `Record` values they return;
* `devkit.kafka.errors`: `KafkaDevError` and its `KafkaStartError`;
* `devkit.kafka.cli`: ``python -m devkit.kafka fetch|up|down|status`` (`main`).
"""

from __future__ import annotations

from devkit.kafka.broker import SCRAM_MECHANISMS, KafkaCluster, KafkaNode, ScramUser
from devkit.kafka.cli import main
from devkit.kafka.clients import (
    Headers,
    Key,
    PartitionState,
    ProduceRecord,
    Record,
    TopicFactory,
    Value,
    admin_client,
    committed_offsets,
    consume,
    consume_all,
    create_topic,
    delete_topics,
    produce,
    unique_name,
    wait_for_topic,
)
from devkit.kafka.devbroker import (
    RUN_DIR,
    RunningBroker,
    broker_down,
    broker_up,
    running_bootstrap,
    running_broker,
)
from devkit.kafka.errors import KafkaDevError, KafkaStartError
from devkit.kafka.jars import (
    CACHE_DIR,
    POM,
    REPO_ROOT,
    FetchResult,
    fetch,
    fetched_libs_dir,
    kafka_version,
)
from devkit.kafka.jvm import LOG_CONFIG, MIN_JAVA, java_executable
from devkit.kafka.ports import HOST, free_port

__all__ = [
    "CACHE_DIR",
    "HOST",
    "LOG_CONFIG",
    "MIN_JAVA",
    "POM",
    "REPO_ROOT",
    "RUN_DIR",
    "SCRAM_MECHANISMS",
    "FetchResult",
    "Headers",
    "KafkaCluster",
    "KafkaDevError",
    "KafkaNode",
    "KafkaStartError",
    "Key",
    "PartitionState",
    "ProduceRecord",
    "Record",
    "RunningBroker",
    "ScramUser",
    "TopicFactory",
    "Value",
    "admin_client",
    "broker_down",
    "broker_up",
    "committed_offsets",
    "consume",
    "consume_all",
    "create_topic",
    "delete_topics",
    "fetch",
    "fetched_libs_dir",
    "free_port",
    "java_executable",
    "kafka_version",
    "main",
    "produce",
    "running_bootstrap",
    "running_broker",
    "unique_name",
    "wait_for_topic",
]
