"""One consumer group member as a process: built from its configuration, serving its
metrics and health, stopped gracefully by SIGTERM/SIGINT.

:func:`build_member` is the composition root: the sender, the dead-letter writer,
the Kafka consumer and the loop, wired together. :func:`run_worker` runs one member,
alone (serving its own ``/metrics``, ``/healthz`` and ``/readyz``) or as one worker of
``--workers N`` (publishing to the supervisor's board instead).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType

from processor.collector import collector_for_serving
from processor.config import Config
from processor.dlq import DeadLetterWriter
from processor.errors import ConfigError
from processor.kafka.consumer import KafkaSource
from processor.kafka.producer import DeadLetterProducer, dead_letter_producer
from processor.logs import ProgressLog
from processor.logs import configure as configure_logging
from processor.loop import Identify, Processor
from processor.metrics import Health, Metrics, MetricsServer, Registry, Snapshot, snapshot
from processor.service.board import Heartbeat, WorkerBoard
from processor.sink import TenantRouter
from processor.transform import Transformer, load_pipeline

log = logging.getLogger(__name__)

#: /healthz fails when the loop has not turned for this long (a revoke may block
#: it for up to the drain timeout, so that is added).
LIVENESS_SLACK_S = 60.0
#: Seconds between progress lines with ``--log-format text`` (0: none).
PROGRESS_INTERVAL_S = 10.0
#: How long a stopping member waits for its last dead letters to be acknowledged.
DEAD_LETTER_FLUSH_S = 10.0


@dataclass(frozen=True)
class Member:
    """A built member: its loop, and the dead-letter producer to flush when it ends."""

    processor: Processor
    dead_letter_producer: DeadLetterProducer | None

    def run(self) -> int:
        """Run the loop to its end; the exit status."""
        try:
            return self.processor.run()
        finally:
            if self.dead_letter_producer is not None:
                self.dead_letter_producer.flush(DEAD_LETTER_FLUSH_S)


def build_member(
    config: Config,
    transformer: Transformer,
    metrics: Metrics,
    *,
    topics: list[str] | None = None,
    replay: bool = False,
    identify: Identify | None = None,
) -> Member:
    """The member's loop over a real Kafka consumer and the TikTok sender (a sender per
    token: the default one and each of ``tiktok.pixels``).

    ``replay`` (``replay-dlq``): no dead letters are written, and the consumer reports
    each partition's end."""
    sender = TenantRouter(config.tiktok, config.delivery, metrics)
    producer = None
    dead_letters = None
    if config.kafka.dead_letter_topic and not replay:
        producer = DeadLetterProducer(dead_letter_producer(config.kafka))
        dead_letters = DeadLetterWriter(
            producer, config.kafka.dead_letter_topic, time.time, config.dead_letter
        )
    source = KafkaSource(
        config.kafka, list(topics or transformer.topics), metrics, report_end=replay
    )
    processor = Processor(
        config,
        transformer,
        metrics,
        sender,
        source,
        dead_letters=dead_letters,
        replay=replay,
        identify=identify,
    )
    return Member(processor, producer)


def serve_health(
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


def progress_log(
    log_format: str, interval_s: float, read: Callable[[], Snapshot]
) -> ProgressLog | None:
    """The progress line for people (text logs only: JSON readers have /metrics)."""
    if log_format != "text" or not interval_s > 0:
        return None
    progress = ProgressLog(read, interval_s)
    progress.start()
    return progress


def install_signals(processor: Processor) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping gracefully", signal.Signals(signum).name)
        processor.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


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
    member = build_member(config, transformer, metrics)
    processor = member.processor
    timeout = config.delivery.drain_timeout_s + LIVENESS_SLACK_S

    def alive() -> tuple[bool, str]:
        idle = time.time() - processor.last_loop
        return (idle < timeout, "ok" if idle < timeout else f"loop stuck for {idle:.0f}s")

    server: MetricsServer | None = None
    heartbeat: Heartbeat | None = None
    progress: ProgressLog | None = None
    if board is None:
        server = serve_health(config, metrics.registry, alive, lambda: processor.ready)
        server.start()
        progress = progress_log(log_format, progress_interval_s, lambda: snapshot(metrics.registry))
    else:
        heartbeat = Heartbeat(board, index, processor)
        heartbeat.start()
    install_signals(processor)
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
    try:
        with collector_for_serving(young_threshold=None):  # see processor.collector
            status = member.run()
    finally:
        for part in (progress, heartbeat, server):
            if part is not None:
                part.close()
    if processor.stop_reason:
        log.error("stopped: %s", processor.stop_reason)
    return status
