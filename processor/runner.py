"""Building a running processor from a configuration file: the composition root.

``run`` loads and compiles the configuration (failing fast, naming every
problem), builds the sender, the dead-letter writer, the consumer and the
metrics server, installs the signal handlers, and runs the loop.

``--workers N`` starts N such processes, each a member of the same consumer
group (Kafka's group is the distribution engine). The parent process supervises
them and serves one ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics.port``
for all of them, so a scrape target and a probe see the whole process:

- metrics: prometheus-client's multiprocess mode. Each worker writes its values
  to files in a private temporary directory (``$TMPDIR``); the parent adds them
  up at each scrape (counters and histograms summed; each gauge combined as
  :mod:`processor.metrics` says: sums for amounts, maxima for flags and ages);
- health: each worker publishes its loop time and readiness to shared memory
  every second (:class:`WorkerBoard`). ``/healthz`` fails when a worker exited or
  its loop is stuck; ``/readyz`` fails when a worker is starting, halted or
  cannot reach Kafka, or when no worker has partitions;
- a worker that exits on its own (a fatal error, the dead-letter limit) stops
  the others, and the process exits 1, as a single worker would: the
  orchestrator restarts it whole rather than running on with fewer members.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.sharedctypes import Synchronized, SynchronizedString
from pathlib import Path
from types import FrameType

from processor.app import NO_PARTITIONS, DeadLetterIdentity, Mode, Processor, RunReport
from processor.config import Config
from processor.dlq import DeadLetterWriter
from processor.errors import ConfigError
from processor.logs import ProgressLog
from processor.logs import configure as configure_logging
from processor.metrics import (
    Health,
    Metrics,
    MetricsServer,
    Registry,
    Snapshot,
    enable_multiprocess,
    mark_worker_dead,
    multiprocess_registry,
    snapshot,
)
from processor.sink import Sender
from processor.source import DeadLetterProducer, Source, dead_letter_producer
from processor.transform import Transformer, load_pipeline

log = logging.getLogger(__name__)

#: /healthz fails when the loop has not turned for this long (a revoke may block
#: it for up to the drain timeout, so that is added).
LIVENESS_SLACK_S = 60.0
#: How often a worker of ``--workers N`` publishes its health to the parent, seconds.
HEARTBEAT_S = 1.0
#: Seconds between progress lines with ``--log-format text`` (0: none).
PROGRESS_INTERVAL_S = 10.0


class WorkerBoard:
    """The health of each worker of ``--workers N``, in shared memory: written by
    the worker every :data:`HEARTBEAT_S`, read by the parent's ``/healthz`` and
    ``/readyz``. A slot whose loop time is 0 belongs to a worker still starting."""

    REASON_BYTES = 256

    def __init__(self, context: SpawnContext, workers: int) -> None:
        self.workers = workers
        self._loops: list[Synchronized[float]] = [
            context.Value(ctypes.c_double, 0.0) for _ in range(workers)
        ]
        self._ready: list[Synchronized[bool]] = [
            context.Value(ctypes.c_bool, False) for _ in range(workers)
        ]
        self._reasons: list[SynchronizedString] = [
            context.Array(ctypes.c_char, self.REASON_BYTES) for _ in range(workers)
        ]

    def publish(self, index: int, last_loop: float, ready: bool, reason: str) -> None:
        # Cut to the slot on a character boundary (NUL ends the value).
        text = reason.encode()[: self.REASON_BYTES - 1].decode(errors="ignore").encode()
        text = text.replace(b"\0", b" ")
        self._reasons[index].value = text
        self._ready[index].value = ready
        self._loops[index].value = last_loop

    def read(self, index: int) -> tuple[float, bool, str]:
        """(last loop turn, ready, reason) of worker ``index``."""
        reason = self._reasons[index].value.decode(errors="replace")
        return self._loops[index].value, self._ready[index].value, reason


class _Heartbeat:
    """A worker's thread that publishes its health to the board, and stops the worker
    gracefully if the parent dies (killed with -9, it could not pass a signal on)."""

    def __init__(self, board: WorkerBoard, index: int, processor: Processor) -> None:
        self._board, self._index, self._processor = board, index, processor
        self._parent = os.getppid()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            ready, reason = self._processor.ready
            self._board.publish(self._index, self._processor.last_loop, ready, reason)
            if os.getppid() != self._parent:
                log.error("the parent process is gone: stopping")
                self._processor.request_stop()
                return
            if self._stopped.wait(HEARTBEAT_S):
                return


def _serve(
    config: Config, registry: Registry, liveness: Health, readiness: Health
) -> MetricsServer:
    port = config.metrics.port
    try:
        return MetricsServer(
            registry,
            config.metrics.host,
            port,
            liveness=liveness,
            readiness=readiness,
        )
    except OSError as exc:
        raise ConfigError(
            [f"metrics.port: cannot listen on {config.metrics.host}:{port}: {exc.strerror}"]
        ) from None


def _progress(
    log_format: str, interval_s: float, read: Callable[[], Snapshot]
) -> ProgressLog | None:
    """The progress line for people (text logs only: JSON readers have /metrics)."""
    if log_format != "text" or not interval_s > 0:
        return None
    progress = ProgressLog(read, interval_s)
    progress.start()
    return progress


def _install_signals(processor: Processor) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping gracefully", signal.Signals(signum).name)
        processor.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def build_processor(
    config: Config,
    transformer: Transformer,
    metrics: Metrics,
    *,
    mode: Mode | None = None,
    topics: list[str] | None = None,
) -> tuple[Processor, DeadLetterProducer | None]:
    """The processor and its dead-letter producer (to flush at the end)."""
    sender = Sender(config.tiktok, config.delivery, metrics)
    producer = None
    dead_letters = None
    if config.kafka.dead_letter_topic and (mode is None or mode.dead_letter):
        producer = DeadLetterProducer(dead_letter_producer(config.kafka))
        dead_letters = DeadLetterWriter(
            producer, config.kafka.dead_letter_topic, time.time, config.dead_letter
        )
    processor = Processor(
        config,
        transformer,
        metrics,
        sender,
        source_factory=Source,
        topics=topics,
        dead_letters=dead_letters,
        mode=mode,
    )
    return processor, producer


def run_worker(
    config_path: str,
    index: int = 0,
    log_format: str = "json",
    log_level: str = "INFO",
    *,
    board: WorkerBoard | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> int:
    """One consumer group member, until SIGTERM/SIGINT or a fatal error. Alone, it
    serves its own metrics and health; as worker ``index`` of ``--workers N``
    (``board`` given) it writes its metrics to the shared directory and its health
    to the board, and the parent serves both."""
    configure_logging(log_format, log_level, worker=index if board is not None else None)
    config, transformer, warnings = load_pipeline(config_path, clock=time.time, require_token=True)
    for warning in warnings:
        log.warning("config: %s", warning)
    if index:
        config = replace(
            config, kafka=replace(config.kafka, client_id=f"{config.kafka.client_id}-{index}")
        )
    metrics = Metrics(multiprocess=board is not None)
    processor, producer = build_processor(config, transformer, metrics)
    timeout = config.delivery.drain_timeout_s + LIVENESS_SLACK_S

    def alive() -> tuple[bool, str]:
        idle = time.time() - processor.last_loop
        return (idle < timeout, "ok" if idle < timeout else f"loop stuck for {idle:.0f}s")

    server: MetricsServer | None = None
    heartbeat: _Heartbeat | None = None
    progress: ProgressLog | None = None
    if board is None:
        server = _serve(config, metrics.registry, alive, lambda: processor.ready)
        server.start()
        progress = _progress(log_format, progress_interval_s, lambda: snapshot(metrics.registry))
    else:
        heartbeat = _Heartbeat(board, index, processor)
        heartbeat.start()
    _install_signals(processor)
    log.info(
        "processor started",
        extra={
            "worker": index,
            "topics": list(transformer.topics),
            "group": config.kafka.group_id,
            "metrics_port": server.port if server is not None else None,
            "endpoint": config.tiktok.endpoint,
        },
    )
    # Everything built so far lives as long as the process: keep it out of the GC's way.
    gc.freeze()
    try:
        status = processor.run()
    finally:
        if producer is not None:
            producer.flush(10)
        for part in (progress, heartbeat, server):
            if part is not None:
                part.close()
    if processor.stop_reason:
        log.error("stopped: %s", processor.stop_reason)
    return status


def _worker_entry(
    config_path: str,
    index: int,
    log_format: str,
    log_level: str,
    board: WorkerBoard,
) -> None:
    sys.exit(run_worker(config_path, index, log_format, log_level, board=board))


def run_workers(
    config_path: str,
    workers: int,
    log_format: str,
    log_level: str,
    *,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> int:
    """N processes in one consumer group, one metrics endpoint for all of them (see the
    module docstring); SIGTERM/SIGINT are passed on to each."""
    if workers == 1:
        return run_worker(
            config_path, 0, log_format, log_level, progress_interval_s=progress_interval_s
        )
    configure_logging(log_format, log_level)
    # Fail fast, once, before any worker starts.
    config, _, _ = load_pipeline(config_path, clock=time.time, require_token=True)
    directory = Path(tempfile.mkdtemp(prefix="tiktok-events-metrics-"))
    try:
        enable_multiprocess(directory)  # before the workers start: they read it at import
        supervisor = _Supervisor(config, directory, workers)
        return supervisor.run(config_path, log_format, log_level, progress_interval_s)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Supervisor:
    """The parent of ``--workers N``: starts the workers, serves their metrics and
    health on ``metrics.port``, and stops them together."""

    def __init__(self, config: Config, directory: Path, workers: int) -> None:
        self._config = config
        self._directory = directory
        self._context = multiprocessing.get_context("spawn")
        self._board = WorkerBoard(self._context, workers)
        self._children: list[SpawnProcess] = []
        self._stopping = threading.Event()
        self._timeout = config.delivery.drain_timeout_s + LIVENESS_SLACK_S
        self._registry = multiprocess_registry(directory)

    def alive(self) -> tuple[bool, str]:
        for i, child in enumerate(self._children):
            if child.exitcode is not None:
                return False, f"worker {i} exited with status {child.exitcode}"
            last_loop, _, _ = self._board.read(i)
            idle = time.time() - last_loop
            if last_loop and idle >= self._timeout:
                return False, f"worker {i}: loop stuck for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "stopping"
        problems, idle = [], 0
        for i, child in enumerate(self._children):
            last_loop, ok, reason = self._board.read(i)
            if child.exitcode is not None:
                problems.append(f"worker {i}: exited with status {child.exitcode}")
            elif not last_loop:
                problems.append(f"worker {i}: starting")
            elif not ok and reason == NO_PARTITIONS:
                idle += 1  # more workers than partitions: the others do the work
            elif not ok:
                problems.append(f"worker {i}: {reason}")
        workers = len(self._children)
        if problems:
            return False, "; ".join(problems)
        if idle == workers:
            return False, NO_PARTITIONS
        return True, f"ok: {workers - idle} of {workers} workers have partitions"

    def run(
        self, config_path: str, log_format: str, log_level: str, progress_interval_s: float
    ) -> int:
        self._children = [
            self._context.Process(
                target=_worker_entry,
                args=(config_path, i, log_format, log_level, self._board),
                name=f"tiktok-events-worker-{i}",
            )
            for i in range(self._board.workers)
        ]
        server = _serve(self._config, self._registry, self.alive, self.ready)
        server.start()
        for child in self._children:
            child.start()
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        log.info(
            "workers started",
            extra={
                "workers": len(self._children),
                "metrics_port": server.port,
                "group": self._config.kafka.group_id,
            },
        )
        registry = self._registry
        progress = _progress(log_format, progress_interval_s, lambda: snapshot(registry))
        try:
            self._wait()
        finally:
            if progress is not None:
                progress.close()
            server.close()
        codes = [child.exitcode or 0 for child in self._children]
        log.info("workers stopped", extra={"exit_codes": codes})
        return 0 if all(c == 0 for c in codes) else 1

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping.set()
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for child in self._children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    def _wait(self) -> None:
        """Until every worker has exited; the first to fail stops the others."""
        running = list(enumerate(self._children))
        while running:
            multiprocessing.connection.wait([child.sentinel for _, child in running])
            exited = [(i, child) for i, child in running if child.exitcode is not None]
            running = [entry for entry in running if entry not in exited]
            for i, child in exited:
                child.join()
                if child.pid is not None:
                    mark_worker_dead(child.pid, self._directory)
                if child.exitcode != 0 and not self._stopping.is_set():
                    log.error(
                        "worker %d exited with status %s: stopping the others",
                        i,
                        child.exitcode,
                        extra={"worker": i, "exit_code": child.exitcode},
                    )
                    self._stopping.set()
                    self._signal_all(signal.SIGTERM)


def replay_dead_letters(
    config_path: str, group: str | None, log_format: str, log_level: str
) -> RunReport:
    """Feed the dead-letter topic through the current configuration, once, to its end.

    Each dead letter is transformed as its source record (same topic, partition
    and offset, so the same event ids); what maps is sent to TikTok; what is
    still rejected stays where it is and is counted. The replay group's offsets
    are committed like the processor's, so a second replay starts where the
    first stopped.
    """
    configure_logging(log_format, log_level)
    config, transformer, _ = load_pipeline(config_path, clock=time.time, require_token=True)
    topic = config.kafka.dead_letter_topic
    if not topic:
        raise SystemExit("error: kafka.dead_letter_topic is not configured: nothing to replay")
    replay_group = group or f"{config.kafka.group_id}.replay"
    config = replace(config, kafka=replace(config.kafka, group_id=replay_group))
    metrics = Metrics()
    mode = Mode(dead_letter=False, stop_at_end=True, identity=DeadLetterIdentity())
    processor, _ = build_processor(config, transformer, metrics, mode=mode, topics=[topic])
    _install_signals(processor)
    processor.run()
    return processor.report
