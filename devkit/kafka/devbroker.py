"""The long-running development broker of ``make kafka-up`` / ``make kafka-down``.

`broker_up` starts a one-node `KafkaCluster` in .cache/kafka/run/ that outlives the process
that started it, recording its pid, address and version there; `running_broker` and
`running_bootstrap` find it again (the demo and other scripts use it), and `broker_down` stops
it and deletes its data. A lock file beside the run dir serialises concurrent up/down calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devkit import proc
from devkit.kafka.broker import KafkaCluster
from devkit.kafka.errors import KafkaDevError
from devkit.kafka.jars import CACHE_DIR
from devkit.kafka.ports import HOST, port_is_free

RUN_DIR = CACHE_DIR / "run"


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
        if port is not None and not port_is_free(port):
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
            proc.terminate_pid(broker.pid, timeout)
        shutil.rmtree(run_dir, ignore_errors=True)
        return broker


def _is_broker_of(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is a live Kafka JVM started for `run_dir` (pids get reused)."""
    if not proc.pid_alive(pid):
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
