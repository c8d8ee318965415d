"""``--workers N``: N member processes in one consumer group, supervised, behind one
``/metrics``, ``/healthz`` and ``/readyz``.

Kafka's group is the distribution engine: each worker is a full member
(:func:`processor.service.worker.run_worker`). The parent process supervises them
and serves one endpoint on ``metrics.port`` for all of them, so a scrape target and
a probe see the whole process:

- metrics: prometheus-client's multiprocess mode. Each worker writes its values
  to files in a private temporary directory (``$TMPDIR``); the parent adds them
  up at each scrape (counters and histograms summed; each gauge combined as
  :mod:`processor.metrics` says: sums for amounts, maxima for flags and ages);
- health: each worker publishes its loop time and readiness to shared memory
  every second (:class:`processor.service.board.WorkerBoard`). ``/healthz`` fails
  when a worker exited or its loop is stuck; ``/readyz`` fails when a worker is
  starting, halted or cannot reach Kafka, or when no worker has partitions;
- a worker that exits on its own (a fatal error, the dead-letter limit) stops
  the others, and the process exits 1, as a single worker would: the
  orchestrator restarts it whole rather than running on with fewer members.
"""

from __future__ import annotations

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
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType

from processor.config import Config
from processor.logs import configure as configure_logging
from processor.loop import NO_PARTITIONS
from processor.metrics import enable_multiprocess, mark_worker_dead, multiprocess_registry, snapshot
from processor.service.board import WorkerBoard
from processor.service.worker import (
    LIVENESS_SLACK_S,
    PROGRESS_INTERVAL_S,
    progress_log,
    run_worker,
    serve_health,
)
from processor.transform import load_pipeline

log = logging.getLogger(__name__)


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
        supervisor = Supervisor(config, directory, workers)
        return supervisor.run(config_path, log_format, log_level, progress_interval_s)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Supervisor:
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
        server = serve_health(self._config, self._registry, self.alive, self.ready)
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
        progress = progress_log(log_format, progress_interval_s, lambda: snapshot(registry))
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
