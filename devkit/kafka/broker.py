"""KRaft nodes and clusters on 127.0.0.1: configuring, formatting, starting and stopping them.

`KafkaCluster` writes server.properties for combined broker+controller KRaft nodes, formats
their storage and runs ``java -cp '<libs>/*' kafka.Kafka`` for each (one `KafkaNode` a JVM).
One node is the development/test broker; three nodes (replication factor 3, min.insync.replicas
2) are the failover cluster whose nodes tests can `kill` (SIGKILL) and `restart`. With
``sasl=ScramUser(name, password)`` clients must authenticate with SASL/SCRAM.
"""

from __future__ import annotations

import base64
import contextlib
import re
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from devkit import proc
from devkit.kafka.errors import KafkaDevError, KafkaStartError
from devkit.kafka.jars import fetch, kafka_version
from devkit.kafka.jvm import java_command, java_executable
from devkit.kafka.ports import HOST, free_port, port_accepts

# How long nodes of a cluster that lost its controller quorum get to finish stopping (see
# KafkaCluster._stop_nodes): a little more than the Raft leader's 5 s graceful resignation.
_QUORUM_LOST_GRACE = 7.0

#: The SCRAM mechanisms a SASL cluster enables; its user gets credentials for each.
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# Both the storage tool's --add-scram value and the broker's JAAS line are written by hand:
# names and passwords are kept to characters neither syntax gives a meaning to.
_SCRAM_TEXT = re.compile(r'[^\s"\\,=\[\];]+')


@dataclass(frozen=True, slots=True)
class ScramUser:
    """A SASL/SCRAM user of a `KafkaCluster`: created in the cluster metadata when the storage is
    formatted (``kafka-storage format --add-scram``), for every mechanism in `SCRAM_MECHANISMS`.

    `mechanism` is the one the brokers use between themselves and `client_config` gives to
    clients; either works for clients. Raises ValueError for a mechanism Kafka does not know or a
    name or password that is empty or contains whitespace or any of ``" \\ , = [ ] ;``.
    """

    name: str
    password: str = field(repr=False)
    mechanism: str = "SCRAM-SHA-256"

    def __post_init__(self) -> None:
        if self.mechanism not in SCRAM_MECHANISMS:
            raise ValueError(
                f"SCRAM mechanism must be one of {', '.join(SCRAM_MECHANISMS)}, "
                f"not {self.mechanism!r}"
            )
        for what, value in (("name", self.name), ("password", self.password)):
            if not _SCRAM_TEXT.fullmatch(value):
                raise ValueError(
                    f"SCRAM user {what} must be non-empty, without whitespace or any of "
                    '" \\ , = [ ] ;'
                )

    def client_config(self, *, password: str | None = None) -> dict[str, str]:
        """librdkafka settings that authenticate as this user (with `password` if given)."""
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.name,
            "sasl.password": self.password if password is None else password,
        }


@dataclass
class KafkaNode:
    """One combined broker+controller JVM of a `KafkaCluster`, with its directory and ports.

    Layout of `directory`: server.properties, data/ (log.dirs, including the KRaft metadata
    log), logs/server.log (the broker's Log4j log) and stdout.log (the JVM's own output, where
    errors from before logging starts end up).
    """

    node_id: int
    directory: Path
    broker_port: int
    controller_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.broker_port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_file(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker log and of the JVM output, for error messages."""
        log = proc.file_tail(self.log_file, 400)
        # The innermost "Caused by" lines of the last stack trace name the problem (a port in
        # use, a bad setting); the log tail around them is mostly stack frames.
        causes = [line for line in log.splitlines() if line.startswith("Caused by: ")]
        cause = "".join(f"cause: {line.removeprefix('Caused by: ')}\n" for line in causes[-2:])
        return (
            f"{cause}--- {self.log_file} (last {lines} lines) ---\n{proc.tail(log, lines)}\n"
            f"--- {self.stdout_file} ---\n{proc.file_tail(self.stdout_file, 20)}"
        )


class KafkaCluster:
    """`nodes` combined broker+controller KRaft nodes on 127.0.0.1 sharing one controller quorum.

    With one node this is the development/test broker; with three it is the failover cluster
    (default replication factor 3, min.insync.replicas 2). Node i (0-based index, as used by
    `kill` and `restart`) has node.id i + 1 and lives in `directory`/node-<i+1>/. Ports are
    chosen when the object is created and kept for its lifetime, so a restarted node comes back
    at the same address with the same data.

    Use as a context manager, or call `start()` and `stop()`:

        with KafkaCluster(tmp_path, nodes=3) as cluster:
            produce(cluster.bootstrap_servers, topic, records)
            cluster.kill(0)
            cluster.restart(0)

    `die_with_parent` (default True) has the JVMs killed when the thread that started them
    exits, so a killed test run leaves no brokers behind; `make kafka-up` turns it off.

    With `sasl` (a `ScramUser`) the client listener is SASL_PLAINTEXT and requires SCRAM
    authentication (a client without credentials, or with wrong ones, gets nothing), the brokers
    authenticate to each other as that user, and only the controller listener stays PLAINTEXT.
    Clients, the cluster's own start-up check included, pass `client_config`:

        with KafkaCluster(tmp_path, sasl=ScramUser("alice", "alice-secret")) as cluster:
            produce(cluster.bootstrap_servers, topic, records, config=cluster.client_config)
    """

    def __init__(
        self,
        directory: Path,
        nodes: int = 1,
        *,
        broker_ports: Sequence[int] | None = None,
        heap: str = "512m",
        overrides: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
        libs_dir: Path | None = None,
        sasl: ScramUser | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a Kafka cluster needs at least one node")
        if broker_ports is not None and len(broker_ports) != nodes:
            raise ValueError(f"broker_ports needs {nodes} ports, got {len(broker_ports)}")
        self.directory = directory.resolve()
        ports = (
            list(broker_ports) if broker_ports is not None else [free_port() for _ in range(nodes)]
        )
        self.nodes: tuple[KafkaNode, ...] = tuple(
            KafkaNode(
                node_id=index + 1,
                directory=self.directory / f"node-{index + 1}",
                broker_port=ports[index],
                controller_port=free_port(),
            )
            for index in range(nodes)
        )
        self.version = kafka_version()
        self.heap = heap
        self.overrides = dict(overrides or {})
        self.die_with_parent = die_with_parent
        self.sasl = sasl
        self.cluster_id = _new_cluster_id()
        self.startup_seconds: float | None = None
        self._libs_dir = libs_dir

    # -- addresses and configuration --------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """All nodes' client listeners, comma separated (clients need only one alive)."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def client_config(self) -> dict[str, str]:
        """The settings a client needs besides bootstrap.servers: {} unless SASL is on."""
        return self.sasl.client_config() if self.sasl is not None else {}

    def node_properties(self, node: KafkaNode) -> dict[str, str]:
        """The server.properties of `node` (the cluster's `overrides` applied last)."""
        size = len(self.nodes)
        replication = min(3, size)
        min_isr = min(2, size)
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self.nodes)
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            # A static quorum: every node knows every voter up front, so formatting needs no
            # --standalone/--initial-controllers and the same code serves one or three nodes.
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{node.broker_port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{node.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_isr),
            # Internal topics: replicated as far as the cluster allows (their defaults of 3
            # would make a single broker refuse to create them), and few partitions, because
            # every partition costs files and start-up time.
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(replication),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            # The demo writes to topics it never created; tests create theirs explicitly.
            "auto.create.topics.enable": "true",
            # Test speed: a classic group's first member gets its assignment at once, and the
            # KIP-848 (group.protocol=consumer) coordinator heartbeats every second instead of
            # five and drops a vanished member after 10 s instead of 45.
            "group.initial.rebalance.delay.ms": "0",
            "group.consumer.min.heartbeat.interval.ms": "1000",
            "group.consumer.heartbeat.interval.ms": "1000",
            "group.consumer.min.session.timeout.ms": "6000",
            "group.consumer.session.timeout.ms": "10000",
            # Failover speed: a killed broker is fenced, and its partitions get new leaders,
            # after 4 s without heartbeats instead of 9.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "4000",
            # A light footprint: threads and the log cleaner's 128 MiB buffer sized for tests.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        if self.sasl is not None:
            properties.update(self._sasl_properties(node, self.sasl))
        properties.update(self.overrides)
        return properties

    def write_config(self, node: KafkaNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"# Kafka {self.version} node {node.node_id}, generated by devkit.kafka",
            *(f"{key}={value}" for key, value in self.node_properties(node).items()),
        ]
        node.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @staticmethod
    def _sasl_properties(node: KafkaNode, user: ScramUser) -> dict[str, str]:
        # The listener is named after its protocol, so its per-listener properties are
        # listener.name.sasl_plaintext.*. No authorizer: SASL authenticates, nothing is denied.
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user.name}" password="{user.password}";'
        )
        return {
            "listeners": f"SASL_PLAINTEXT://{HOST}:{node.broker_port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{HOST}:{node.broker_port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
            "sasl.mechanism.inter.broker.protocol": user.mechanism,
            # The broker's own login (replica fetchers, as a client of the other brokers) for
            # each mechanism; as a server, SCRAM checks clients against the metadata log.
            **{
                f"listener.name.sasl_plaintext.{mechanism.lower()}.sasl.jaas.config": jaas
                for mechanism in SCRAM_MECHANISMS
            },
        }

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> float:
        """Format (first time only) and start every node; wait until all serve metadata.

        Returns the start-up time in seconds (also kept in `startup_seconds`). On failure every
        node is stopped and KafkaStartError carries the failing node's log tail.
        """
        started = time.monotonic()
        deadline = started + timeout
        java = java_executable()
        self._require_libs()
        for node in self.nodes:
            self.write_config(node)
        try:
            self._format_storage(java, deadline)
            for node in self.nodes:
                self._launch(node)
            self._wait_until_serving(self.nodes, deadline)
        except BaseException:
            self.stop(timeout=10)
            raise
        self.startup_seconds = time.monotonic() - started
        return self.startup_seconds

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every running node cleanly (SIGTERM), SIGKILL what is left after `timeout`."""
        self._stop_nodes([node for node in self.nodes if node.is_running()], timeout)

    def kill(self, index: int) -> None:
        """SIGKILL (kill -9) node `index` and reap it: no shutdown, no flush, like a crash."""
        node = self.nodes[index]
        if node.process is None or not node.is_running():
            raise KafkaDevError(f"Kafka node {node.node_id} (index {index}) is not running")
        node.process.kill()
        node.process.wait()

    def restart(self, index: int, timeout: float = 60.0) -> None:
        """Start node `index` again (stopping it first if it runs) with its data and ports.

        Returns once the node is back as a live broker in the cluster metadata. Its replicas may
        still be catching up: use `wait_for_topic(..., full_isr=True)` when that matters.
        """
        node = self.nodes[index]
        deadline = time.monotonic() + timeout
        if node.is_running():
            self._stop_nodes([node], timeout / 2)
        self._launch(node)
        self._wait_until_serving([node], deadline)

    def heal(self, timeout: float = 60.0) -> None:
        """Restart every node that is not running (e.g. left killed by a failed test)."""
        down = [node for node in self.nodes if not node.is_running()]
        for node in down:
            self._launch(node)
        if down:
            self._wait_until_serving(down, time.monotonic() + timeout)

    def is_running(self, index: int) -> bool:
        return self.nodes[index].is_running()

    def detach(self) -> None:
        """Forget the node processes without stopping them (the `make kafka-up` broker)."""
        for node in self.nodes:
            process, node.process = node.process, None
            with warnings.catch_warnings():
                # Popen warns when collected while its child runs; outliving us is the point.
                warnings.simplefilter("ignore", ResourceWarning)
                del process

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------

    def _require_libs(self) -> Path:
        if self._libs_dir is None:
            self._libs_dir = fetch().libs_dir
        return self._libs_dir

    def _format_storage(self, java: str, deadline: float) -> None:
        libs_dir = self._require_libs()
        # Formatting is one short JVM per node: run them side by side.
        formatting: list[tuple[KafkaNode, subprocess.Popen[bytes]]] = []
        for node in self.nodes:
            meta = node.data_dir / "meta.properties"
            if meta.exists():
                # Formatted by an earlier start() of this directory: keep its cluster id.
                match = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.MULTILINE)
                if match:
                    self.cluster_id = match.group(1)
                continue
            command = java_command(
                java,
                libs_dir,
                "kafka.tools.StorageTool",
                [
                    "format",
                    "--cluster-id",
                    self.cluster_id,
                    "--config",
                    str(node.config_file),
                    *self._scram_arguments(),
                ],
                heap="256m",
                logs_dir=node.logs_dir,
            )
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=node.directory,
            )
            formatting.append((node, process))
        try:
            for node, process in formatting:
                output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if process.returncode != 0:
                    raise KafkaStartError(
                        f"formatting the storage of Kafka node {node.node_id} failed "
                        f"(exit {process.returncode}):\n{proc.tail(proc.as_text(output))}"
                    )
        finally:
            for _, process in formatting:
                if process.poll() is None:
                    process.kill()
                    process.communicate()

    def _scram_arguments(self) -> list[str]:
        """--add-scram options creating the SASL user, for every mechanism the brokers enable."""
        if self.sasl is None:
            return []
        user = self.sasl
        return [
            argument
            for mechanism in SCRAM_MECHANISMS
            for argument in (
                "--add-scram",
                f"{mechanism}=[name={user.name},password={user.password}]",
            )
        ]

    def _launch(self, node: KafkaNode) -> None:
        libs_dir = self._require_libs()
        node.logs_dir.mkdir(parents=True, exist_ok=True)
        prefix = proc.die_with_parent_prefix() if self.die_with_parent else ()
        command = [
            *prefix,
            *java_command(
                java_executable(),
                libs_dir,
                "kafka.Kafka",
                [str(node.config_file)],
                heap=self.heap,
                logs_dir=node.logs_dir,
            ),
        ]
        with node.stdout_file.open("ab") as stdout:
            node.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=node.directory,
                # Its own session: a Ctrl-C in the terminal reaches pytest (which stops the
                # brokers cleanly in fixture teardown) and not the JVMs directly.
                start_new_session=True,
            )

    def _wait_until_serving(self, nodes: Sequence[KafkaNode], deadline: float) -> None:
        # Poll the TCP port first: quiet and cheap, while a client would log every refusal.
        waiting = list(nodes)
        while waiting:
            self._check_alive(nodes)
            waiting = [node for node in waiting if not port_accepts(node.broker_port)]
            if waiting and time.monotonic() > deadline:
                raise KafkaStartError(
                    f"Kafka node {waiting[0].node_id} did not open {waiting[0].bootstrap} in time\n"
                    f"{waiting[0].log_tail()}"
                )
            if waiting:
                time.sleep(0.1)
        # A KRaft broker processes requests once it has caught up with the metadata log and the
        # controller has unfenced it, and only unfenced brokers are listed in metadata: wait
        # until every running node is listed.
        running = [node for node in self.nodes if node.is_running()]
        expected = {node.node_id for node in running}
        admin = AdminClient(
            {
                "bootstrap.servers": ",".join(node.bootstrap for node in running),
                **self.client_config,
            }
        )
        listed: set[int] = set()
        while True:
            self._check_alive(nodes)
            with contextlib.suppress(KafkaException):
                metadata = admin.list_topics(
                    timeout=max(0.5, min(5.0, deadline - time.monotonic()))
                )
                listed = set(metadata.brokers)
                if expected <= listed:
                    return
            if time.monotonic() > deadline:
                missing = sorted(expected - listed)
                node = self.nodes[missing[0] - 1] if missing else nodes[0]
                raise KafkaStartError(
                    f"Kafka nodes {missing} are not live brokers in time (metadata lists "
                    f"{sorted(listed)})\n{node.log_tail()}"
                )
            time.sleep(0.1)

    @staticmethod
    def _check_alive(nodes: Iterable[KafkaNode]) -> None:
        for node in nodes:
            if node.process is not None and node.process.poll() is not None:
                raise KafkaStartError(
                    f"Kafka node {node.node_id} exited with code {node.process.returncode} while "
                    f"starting\n{node.log_tail()}"
                )

    def _stop_nodes(self, nodes: Sequence[KafkaNode], timeout: float) -> None:
        # SIGTERM all first, then wait: nodes stopping together do their controlled shutdown
        # while the controller quorum is still there, instead of one by one after it is gone.
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        deadline = time.monotonic() + timeout
        majority = len(self.nodes) // 2 + 1
        quorum_lost_at: float | None = None
        while True:
            running = [node for node in nodes if node.is_running()]
            if not running:
                return
            now = time.monotonic()
            if quorum_lost_at is None and sum(n.is_running() for n in self.nodes) < majority:
                quorum_lost_at = now
            # Without a quorum the nodes still running can only wait out timeouts: the Raft
            # leader's 5 s resignation, or a controlled shutdown the controller can no longer
            # approve, which would hang for minutes. Kill them once the former is over.
            if now > deadline or (
                quorum_lost_at is not None and now > quorum_lost_at + _QUORUM_LOST_GRACE
            ):
                for node in running:
                    if node.process is not None:
                        node.process.kill()
                        node.process.wait()
                return
            time.sleep(0.05)


def _new_cluster_id() -> str:
    while True:
        # Kafka's cluster ids are URL-safe base64 UUIDs; one starting with "-" would be read as
        # an option by the storage tool's command line parser.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id
