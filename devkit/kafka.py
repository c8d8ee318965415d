"""A real Apache Kafka on this machine for development, tests and CI, without Docker.

This module owns everything about the local Kafka:

* fetching the broker: `fetch()` runs Maven once on dev/kafka/pom.xml and caches the jars in
  .cache/kafka/libs-<version>/; a marker file makes every later call a no-op;
* running it: `KafkaCluster` writes server.properties for combined broker+controller KRaft nodes
  on 127.0.0.1, formats their storage and runs ``java -cp '<libs>/*' kafka.Kafka``. One node is
  the development/test broker; three nodes (replication factor 3, min.insync.replicas 2) are the
  failover cluster whose nodes tests can `kill` (SIGKILL) and `restart`;
* the long-running development broker of `make kafka-up` / `make kafka-down`, with its state in
  .cache/kafka/run/, and `running_bootstrap()` so the demo and other code can find it;
* small client helpers shared by tests and scripts: `create_topic`, `TopicFactory`, `produce`,
  `consume`, `consume_all`, `committed_offsets`.

CLI: ``python -m devkit.kafka fetch|up|down|status`` (see `main`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import hashlib
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# The documented home of NewTopic, which the package's type stubs do not re-export explicitly.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "dev" / "kafka" / "pom.xml"
LOG_CONFIG = REPO_ROOT / "dev" / "kafka" / "log4j2.yaml"
CACHE_DIR = REPO_ROOT / ".cache" / "kafka"
RUN_DIR = CACHE_DIR / "run"

HOST = "127.0.0.1"
MIN_JAVA = 17  # Kafka 4.x brokers run on Java 17+.

# Written last into a libs dir; holds the digest of the pom the jars were copied for.
_FETCH_MARKER = ".fetched"
# Random listener ports are drawn below Linux's ephemeral range (32768-60999 by default): a node
# restarted after `kill -9` must get its old port back, and a port from the ephemeral range may
# meanwhile have become the source port of some client connection.
_PORT_RANGE = (20000, 32000)
_allocated_ports: set[int] = set()
# How long nodes of a cluster that lost its controller quorum get to finish stopping (see
# KafkaCluster._stop_nodes): a little more than the Raft leader's 5 s graceful resignation.
_QUORUM_LOST_GRACE = 7.0


class KafkaDevError(RuntimeError):
    """A local Kafka problem, with a message written for a human (the CLI prints it as is)."""


class KafkaStartError(KafkaDevError):
    """A node exited or did not answer while starting; the message carries its log tail."""


# --------------------------------------------------------------------------------------------
# Fetching the broker jars
# --------------------------------------------------------------------------------------------


def kafka_version(pom: Path = POM) -> str:
    """The Kafka version pinned in dev/kafka/pom.xml, the single place it is written down."""
    text = pom.read_text(encoding="utf-8")
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", text)
    if match is None:
        raise KafkaDevError(f"{pom} has no <kafka.version> property")
    return match.group(1)


@dataclass(frozen=True)
class FetchResult:
    """Where the jars of one Kafka version are, and whether this call had to run Maven."""

    version: str
    libs_dir: Path
    downloaded: bool  # False: the cache was complete and Maven was not run.
    seconds: float


def fetched_libs_dir(*, cache_dir: Path = CACHE_DIR, pom: Path = POM) -> Path | None:
    """The cached libs dir for the pom's Kafka version if it is complete, else None."""
    libs_dir = cache_dir / f"libs-{kafka_version(pom)}"
    try:
        marker = (libs_dir / _FETCH_MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    # The digest covers the whole pom, so changing a dependency re-fetches even at the same
    # Kafka version.
    return libs_dir if marker == _pom_digest(pom) else None


def fetch(*, cache_dir: Path = CACHE_DIR, pom: Path = POM, timeout: float = 900.0) -> FetchResult:
    """Copy the broker jars into `cache_dir`/libs-<version>/ with Maven, unless already there.

    Runs ``mvn -q -B -f <pom> dependency:copy-dependencies`` without standard input, so it works
    in CI. Maven copies into a staging dir that is renamed into place only once complete: an
    interrupted fetch never leaves a libs dir that looks usable.
    """
    started = time.monotonic()
    version = kafka_version(pom)
    cached = fetched_libs_dir(cache_dir=cache_dir, pom=pom)
    if cached is not None:
        return FetchResult(version, cached, downloaded=False, seconds=time.monotonic() - started)

    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaDevError(
            "mvn (Apache Maven 3) is required to fetch the Kafka broker jars from Maven Central; "
            "install it (e.g. `apt-get install maven`) and retry"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"libs-{version}"
    staging = Path(tempfile.mkdtemp(prefix=f".libs-{version}-", dir=cache_dir))
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
    ]
    try:
        try:
            proc = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaDevError(
                f"mvn did not finish fetching the Kafka {version} jars in {timeout:.0f} s:\n"
                f"{_tail(_as_text(exc.stdout) + _as_text(exc.stderr))}"
            ) from exc
        if proc.returncode != 0:
            raise KafkaDevError(
                f"mvn failed (exit {proc.returncode}) fetching the Kafka {version} jars:\n"
                f"{_tail(proc.stdout + proc.stderr)}\ncommand: {shlex.join(command)}"
            )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise KafkaDevError(f"mvn succeeded but copied no kafka_2.13 jar (pom: {pom})")
        (staging / _FETCH_MARKER).write_text(_pom_digest(pom) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # Gone already when the rename happened.
    return FetchResult(version, target, downloaded=True, seconds=time.monotonic() - started)


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Java, ports and processes
# --------------------------------------------------------------------------------------------


@functools.cache
def java_executable() -> str:
    """$JAVA_HOME/bin/java or `java` on PATH, checked to be Java 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate is not None and candidate.is_file() else shutil.which("java")
    if java is None:
        raise KafkaDevError(
            f"java ({MIN_JAVA} or newer) is required to run the local Kafka broker; install a "
            "JRE (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    proc = subprocess.run(
        [java, "-version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stderr + proc.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if proc.returncode != 0 or match is None:
        raise KafkaDevError(f"could not run `{java} -version`:\n{_tail(output)}")
    major = int(match.group(1))
    if major == 1:  # Java 8 and older call themselves "1.8".
        major = int(match.group(2) or 0)
    if major < MIN_JAVA:
        raise KafkaDevError(
            f"Kafka {kafka_version()} needs Java {MIN_JAVA} or newer but {java} is Java {major}; "
            "point JAVA_HOME at a newer JDK"
        )
    return java


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on and this process has not handed out."""
    for _ in range(500):
        port = random.randint(*_PORT_RANGE)
        if port not in _allocated_ports and _port_is_free(port):
            _allocated_ports.add(port)
            return port
    raise KafkaDevError(f"found no free TCP port on {HOST} in {_PORT_RANGE}")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java binds server sockets with SO_REUSEADDR, so a port that only has connections in
        # TIME_WAIT (a node just killed) is usable by the broker: test it the same way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


@functools.cache
def _die_with_parent_prefix() -> tuple[str, ...]:
    """A command prefix that makes the JVM get SIGKILL when the process that started it dies.

    Without it, brokers started by a pytest run that is itself killed (CI timeout, Ctrl-\\,
    pytest-timeout's thread method) keep running forever. util-linux's `setpriv` sets the
    Linux parent-death signal and then execs java, so the JVM keeps the pid we know. Elsewhere
    (no setpriv, macOS) brokers simply are not tied to their parent.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    probe = subprocess.run(
        [setpriv, "--pdeathsig", "KILL", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=10,
    )
    return (setpriv, "--pdeathsig", "KILL") if probe.returncode == 0 else ()


def _java_command(
    java: str, libs_dir: Path, main_class: str, args: Sequence[str], *, heap: str, logs_dir: Path
) -> list[str]:
    return [
        java,
        f"-Xmx{heap}",
        "-Xms64m",
        # One GC thread and C1-only JIT: the least CPU at start-up and at rest, which matters
        # more on a 2-core CI machine running three brokers than peak throughput does.
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{libs_dir}/*",
        main_class,
        *args,
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    # A zombie has exited; it only waits for a parent (init, when we are not it) to reap it.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _terminate_pid(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our child, wait for it, SIGKILL it after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        time.sleep(0.05)


def _tail(text: str, lines: int = 40) -> str:
    # Maven prints ANSI colour resets even in batch mode; they garble error messages.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _as_text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _file_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            # Only the end matters and a broker log can be large: read the last 64 KiB.
            handle.seek(max(0, path.stat().st_size - 65536))
            return _tail(handle.read().decode(errors="replace"), lines)
    except OSError:
        return "(no output)"


def _display(path: Path) -> str:
    """`path` relative to the working directory when below it: shorter messages."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _new_cluster_id() -> str:
    while True:
        # Kafka's cluster ids are URL-safe base64 UUIDs; one starting with "-" would be read as
        # an option by the storage tool's command line parser.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


# --------------------------------------------------------------------------------------------
# KRaft nodes and clusters
# --------------------------------------------------------------------------------------------


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
        log = _file_tail(self.log_file, 400)
        # The innermost "Caused by" lines of the last stack trace name the problem (a port in
        # use, a bad setting); the log tail around them is mostly stack frames.
        causes = [line for line in log.splitlines() if line.startswith("Caused by: ")]
        cause = "".join(f"cause: {line.removeprefix('Caused by: ')}\n" for line in causes[-2:])
        return (
            f"{cause}--- {self.log_file} (last {lines} lines) ---\n{_tail(log, lines)}\n"
            f"--- {self.stdout_file} ---\n{_file_tail(self.stdout_file, 20)}"
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
        self.cluster_id = _new_cluster_id()
        self.startup_seconds: float | None = None
        self._libs_dir = libs_dir

    # -- addresses and configuration --------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """All nodes' PLAINTEXT listeners, comma separated (clients need only one alive)."""
        return ",".join(node.bootstrap for node in self.nodes)

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
        properties.update(self.overrides)
        return properties

    def write_config(self, node: KafkaNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"# Kafka {self.version} node {node.node_id}, generated by devkit/kafka.py",
            *(f"{key}={value}" for key, value in self.node_properties(node).items()),
        ]
        node.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

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
            command = _java_command(
                java,
                libs_dir,
                "kafka.tools.StorageTool",
                ["format", "--cluster-id", self.cluster_id, "--config", str(node.config_file)],
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
                        f"(exit {process.returncode}):\n{_tail(_as_text(output))}"
                    )
        finally:
            for _, process in formatting:
                if process.poll() is None:
                    process.kill()
                    process.communicate()

    def _launch(self, node: KafkaNode) -> None:
        libs_dir = self._require_libs()
        node.logs_dir.mkdir(parents=True, exist_ok=True)
        prefix = _die_with_parent_prefix() if self.die_with_parent else ()
        command = [
            *prefix,
            *_java_command(
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
            waiting = [node for node in waiting if not _port_accepts(node.broker_port)]
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
        admin = AdminClient({"bootstrap.servers": ",".join(node.bootstrap for node in running)})
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


# --------------------------------------------------------------------------------------------
# The long-running development broker (`make kafka-up` / `make kafka-down`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningBroker:
    """The broker started by `up`, as recorded in its run dir."""

    pid: int
    bootstrap: str
    version: str
    log_file: Path


def running_broker(run_dir: Path = RUN_DIR) -> RunningBroker | None:
    """The `make kafka-up` broker if it is running, else None (stale state is ignored)."""
    try:
        pid = int((run_dir / "pid").read_text(encoding="utf-8"))
        bootstrap = (run_dir / "bootstrap").read_text(encoding="utf-8").strip()
        version = (run_dir / "version").read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    if not _is_broker_of(pid, run_dir):
        return None
    return RunningBroker(pid, bootstrap, version, run_dir / "node-1" / "logs" / "server.log")


def running_bootstrap(run_dir: Path = RUN_DIR) -> str | None:
    """Bootstrap servers of the `make kafka-up` broker (e.g. "127.0.0.1:23456"), or None."""
    broker = running_broker(run_dir)
    return broker.bootstrap if broker is not None else None


def broker_up(
    run_dir: Path = RUN_DIR, *, port: int | None = None, timeout: float = 90.0
) -> tuple[RunningBroker, float | None]:
    """Start the detached development broker unless it runs; return it and its start-up time.

    The start-up time is None when the broker was already running. The broker outlives this
    process; `broker_down` stops it.
    """
    with _run_lock(run_dir):
        existing = running_broker(run_dir)
        if existing is not None:
            return existing, None
        # Whatever is left is the state of a broker that is gone (reboot, kill -9, failed up).
        shutil.rmtree(run_dir, ignore_errors=True)
        if port is not None and not _port_is_free(port):
            raise KafkaDevError(f"port {port} on {HOST} is already in use")
        cluster = KafkaCluster(
            run_dir,
            nodes=1,
            broker_ports=[port] if port is not None else None,
            die_with_parent=False,
        )
        seconds = cluster.start(timeout)
        node = cluster.nodes[0]
        pid = node.pid
        if pid is None:  # Cannot happen after a successful start(); keeps the types honest.
            raise KafkaDevError("the broker process is missing after start-up")
        (run_dir / "bootstrap").write_text(node.bootstrap + "\n", encoding="utf-8")
        (run_dir / "version").write_text(cluster.version + "\n", encoding="utf-8")
        # The pid file is written last: running_broker() needs all three files.
        (run_dir / "pid").write_text(f"{pid}\n", encoding="utf-8")
        broker = RunningBroker(pid, node.bootstrap, cluster.version, node.log_file)
        cluster.detach()
        return broker, seconds


def broker_down(run_dir: Path = RUN_DIR, *, timeout: float = 30.0) -> RunningBroker | None:
    """Stop the development broker (if running) and delete its run dir, data included."""
    with _run_lock(run_dir):
        broker = running_broker(run_dir)
        if broker is not None:
            _terminate_pid(broker.pid, timeout)
        shutil.rmtree(run_dir, ignore_errors=True)
        return broker


def _is_broker_of(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is a live Kafka JVM started for `run_dir` (pids get reused)."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # No procfs (macOS): trust the pid.
    except OSError:
        return True
    return b"kafka.Kafka" in cmdline and os.fsencode(str(run_dir.resolve())) in cmdline


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    # Beside the run dir, which `down` deletes; serialises concurrent up/down calls.
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with (run_dir.parent / f".{run_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------------------------
# Client helpers for tests and scripts
# --------------------------------------------------------------------------------------------

Key: TypeAlias = str | bytes | None
Value: TypeAlias = str | bytes | None
Headers: TypeAlias = list[tuple[str, str | bytes | None]]
#: (key, value) or (key, value, headers), as `produce` takes them.
ProduceRecord: TypeAlias = tuple[Key, Value] | tuple[Key, Value, Headers]


@dataclass(frozen=True)
class Record:
    """A consumed record, copied out of the client's Message so it outlives the consumer."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # In record order; names may repeat.
    timestamp_ms: int

    @classmethod
    def from_message(cls, message: Message) -> Record:
        raw_headers = message.headers() or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        return cls(
            topic=message.topic() or "",
            partition=_int(message.partition()),
            offset=_int(message.offset()),
            key=message.key(),
            value=message.value(),
            headers=tuple(
                (name, value.encode() if isinstance(value, str) else value) for name, value in pairs
            ),
            timestamp_ms=message.timestamp()[1],
        )


@dataclass(frozen=True)
class PartitionState:
    """Leader and replicas of one partition, as the cluster metadata reports them."""

    partition: int
    leader: int  # Node id; -1 while the partition has no leader.
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def unique_name(prefix: str = "test") -> str:
    """A fresh topic or group name: `prefix` (made name-safe, shortened) plus a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.")[:80] or "test"
    return f"{safe}-{uuid.uuid4().hex[:12]}"


def admin_client(bootstrap: str, **config: Any) -> AdminClient:
    """An AdminClient for `bootstrap`. Keep a reference while waiting on its futures: a
    collected client never completes them.
    """
    return AdminClient({"bootstrap.servers": bootstrap, **config})


def create_topic(
    bootstrap: str,
    name: str,
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    config: Mapping[str, str | int] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create topic `name` and wait until every partition has a leader; return the name."""
    deadline = time.monotonic() + timeout
    admin = admin_client(bootstrap)
    new_topic = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config={key: str(value) for key, value in (config or {}).items()},
    )
    futures = admin.create_topics([new_topic], operation_timeout=timeout, request_timeout=timeout)
    futures[name].result(timeout=timeout)
    wait_for_topic(
        bootstrap,
        name,
        partitions=partitions,
        timeout=max(1.0, deadline - time.monotonic()),
        admin=admin,
    )
    return name


def wait_for_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int | None = None,
    full_isr: bool = False,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
) -> dict[int, PartitionState]:
    """Wait until `topic` has `partitions` partitions (any number if None), each with a leader
    (and, with `full_isr`, every replica in sync); return the partitions' state by id.
    """
    admin = admin or admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    state = "no metadata yet"
    while True:
        try:
            # Metadata for all topics, not list_topics(topic): asking for one topic by name may
            # auto-create it on a broker with auto.create.topics.enable.
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException as exc:
            state = str(exc)
        else:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                state = f"topic not listed ({found.error if found else 'absent'})"
            else:
                parts = {
                    p.id: PartitionState(p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
                    for p in found.partitions.values()
                    if p.error is None
                }
                ready = (
                    bool(parts)
                    and len(parts) == len(found.partitions)
                    and (partitions is None or len(parts) == partitions)
                    and all(
                        part.leader >= 0 and (not full_isr or set(part.isr) >= set(part.replicas))
                        for part in parts.values()
                    )
                )
                if ready:
                    return parts
                state = ", ".join(str(part) for part in parts.values()) or "no partitions yet"
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not ready after {timeout:.0f} s: {state}")
        time.sleep(0.1)


def delete_topics(bootstrap: str, topics: Sequence[str], timeout: float = 10.0) -> None:
    """Delete `topics`, best effort: cleanup must not fail a test that passed."""
    if not topics:
        return
    admin = admin_client(bootstrap)  # Must outlive the futures: they die with the client.
    futures = admin.delete_topics(list(topics), operation_timeout=timeout, request_timeout=timeout)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=timeout)


class TopicFactory:
    """Creates uniquely named topics on one broker or cluster and deletes them in `cleanup()`.

    Calling it like `new_topic(partitions=3, replication_factor=1, config={...})` returns the
    name of a topic that exists with a leader for every partition.
    """

    def __init__(
        self, bootstrap: str, *, prefix: str = "test", replication_factor: int = 1
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.replication_factor = replication_factor
        self.created: list[str] = []

    def __call__(
        self,
        partitions: int = 1,
        replication_factor: int | None = None,
        config: Mapping[str, str | int] | None = None,
        *,
        name: str | None = None,
    ) -> str:
        topic = name or unique_name(self.prefix)
        create_topic(
            self.bootstrap,
            topic,
            partitions=partitions,
            replication_factor=replication_factor or self.replication_factor,
            config=config,
        )
        self.created.append(topic)
        return topic

    def cleanup(self) -> None:
        created, self.created = self.created, []
        delete_topics(self.bootstrap, created)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[ProduceRecord],
    *,
    partition: int | None = None,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[tuple[int, int]]:
    """Produce `records` in order and wait until each is acknowledged (acks=all, idempotent).

    Returns the (partition, offset) of every record, in input order. Raises KafkaDevError if any
    record fails or is not acknowledged within `timeout`: a test's input must never be left
    half-written without anyone noticing. `config` overrides producer settings.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            **(config or {}),
        }
    )
    delivered: list[tuple[int, int] | None] = []
    failures: list[str] = []

    def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"record {index}: {error}")
            else:
                delivered[index] = (_int(message.partition()), _int(message.offset()))

        return report

    for index, record in enumerate(records):
        key, value = record[0], record[1]
        headers = record[2] if len(record) == 3 else None
        delivered.append(None)
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=-1 if partition is None else partition,
                    headers=headers,
                    on_delivery=on_delivery(index),
                )
                break
            except BufferError:
                producer.poll(0.1)  # Local queue full: serve deliveries, then retry.
        producer.poll(0)
    remaining = producer.flush(timeout)
    if failures:
        raise KafkaDevError(
            f"{len(failures)} of {len(delivered)} records to {topic} failed: {failures[:5]}"
        )
    acknowledged = [result for result in delivered if result is not None]
    if remaining or len(acknowledged) != len(delivered):
        raise KafkaDevError(
            f"only {len(acknowledged)} of {len(delivered)} records to {topic} were acknowledged "
            f"within {timeout:.0f} s"
        )
    return acknowledged


def consume(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    group_id: str | None = None,
    commit: bool = False,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[Record]:
    """Read exactly `count` records from `topic` and return them in the order received.

    Without `group_id` the reader assigns itself every partition from the beginning (no group,
    no rebalance to wait for): the quickest way to see what a topic holds. With `group_id` it
    subscribes as a member of that group and starts from the group's committed offsets
    (earliest when none); `commit=True` then commits, synchronously, the position just after the
    last record returned. `config` overrides consumer settings (e.g. group.protocol=consumer).
    Raises TimeoutError when fewer than `count` records arrive within `timeout`.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id or unique_name("devkit-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(config or {}),
        }
    )
    records: list[Record] = []
    try:
        if group_id is None:
            partitions = _partition_ids(consumer, topic, timeout)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        else:
            consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if message is None:
                continue
            _raise_for(message)
            records.append(Record.from_message(message))
        if commit and records:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    if len(records) < count:
        raise TimeoutError(
            f"read {len(records)} of {count} records from {topic} in {timeout:.0f} s"
        )
    return records


def consume_all(
    bootstrap: str, topic: str, *, config: Mapping[str, Any] | None = None, timeout: float = 60.0
) -> list[Record]:
    """Read `topic` from the beginning up to its end as of the call; no group, no commit."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("devkit-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # End-of-partition events mark where each partition's fetch position reached the
            # log end, control records of transactions included.
            "enable.partition.eof": True,
            **(config or {}),
        }
    )
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        ends: dict[int, int] = {}
        for p in _partition_ids(consumer, topic, timeout):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {len(records)} records from {topic} but partitions {sorted(pending)} "
                    f"did not reach their end offsets {ends} in {timeout:.0f} s"
                )
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                if _int(message.offset()) >= ends[_int(message.partition())]:
                    pending.discard(_int(message.partition()))
                continue
            _raise_for(message)
            records.append(Record.from_message(message))
    finally:
        consumer.close()
    return records


def committed_offsets(
    bootstrap: str, group_id: str, topic: str, *, timeout: float = 10.0
) -> dict[int, int]:
    """The offsets `group_id` has committed for `topic`, as {partition: next offset to read}.

    Partitions without a commit are absent.
    """
    request = [ConsumerGroupTopicPartitions(group_id)]
    admin = admin_client(bootstrap)  # Must outlive the future: it dies with the client.
    futures = admin.list_consumer_group_offsets(request, request_timeout=timeout)
    result = futures[group_id].result(timeout=timeout)
    offsets: dict[int, int] = {}
    for tp in result.topic_partitions or []:
        if tp.topic != topic:
            continue
        if tp.error is not None:
            raise KafkaException(tp.error)
        if tp.offset >= 0:
            offsets[tp.partition] = tp.offset
    return offsets


def _partition_ids(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise KafkaDevError(f"topic {topic} not found ({found.error if found else 'absent'})")
    return sorted(found.partitions)


def _raise_for(message: Message) -> None:
    error = message.error()
    if error is not None:
        raise KafkaException(error)


def _int(value: int | None) -> int:
    if value is None:
        raise KafkaDevError("the Kafka client returned a message without partition or offset")
    return value


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _cmd_fetch(_: argparse.Namespace) -> int:
    if fetched_libs_dir() is None:
        print(
            f"Fetching the Kafka {kafka_version()} jars with Maven (first run only)...", flush=True
        )
    result = fetch()
    state = "fetched" if result.downloaded else "already cached"
    print(
        f"Kafka {result.version} jars {state} in {_display(result.libs_dir)} "
        f"({result.seconds:.1f} s)"
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    if fetched_libs_dir() is None:
        _cmd_fetch(args)
    broker, seconds = broker_up(port=args.port)
    logs = _display(broker.log_file)
    if seconds is None:
        print(
            f"Kafka {broker.version} is already running at {broker.bootstrap} "
            f"(pid {broker.pid}, logs: {logs})"
        )
    else:
        print(f"Kafka {broker.version} up at {broker.bootstrap} in {seconds:.1f} s (logs: {logs})")
        print(
            f"Stop it with `make kafka-down`; point tests at it with "
            f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}"
        )
    return 0


def _cmd_status(_: argparse.Namespace) -> int:
    broker = running_broker()
    if broker is None:
        print("Kafka is not running (start it with `make kafka-up`)")
        return 1
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    answering = "" if _port_accepts(port) else " but not accepting connections"
    print(
        f"Kafka {broker.version} running at {broker.bootstrap}{answering} "
        f"(pid {broker.pid}, logs: {_display(broker.log_file)})"
    )
    return 0 if not answering else 1


def _cmd_down(_: argparse.Namespace) -> int:
    started = time.monotonic()
    broker = broker_down()
    if broker is None:
        print("Kafka is not running")
    else:
        print(f"Kafka at {broker.bootstrap} stopped in {time.monotonic() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.kafka",
        description="A local Apache Kafka (KRaft, no Docker) for development and tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "fetch", help="fetch the broker jars with Maven (once; cached)"
    ).set_defaults(handler=_cmd_fetch)
    up = commands.add_parser("up", help="start a broker that keeps running in the background")
    up.add_argument("--port", type=int, help="broker port (default: a free one)")
    up.set_defaults(handler=_cmd_up)
    commands.add_parser("status", help="print the running broker (exit 1 if none)").set_defaults(
        handler=_cmd_status
    )
    commands.add_parser("down", help="stop the broker and delete its data").set_defaults(
        handler=_cmd_down
    )
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KafkaDevError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
