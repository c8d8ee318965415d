"""Building a running processor from a configuration file: the composition root.

``run`` loads and compiles the configuration (failing fast, naming every
problem), builds the sender, the dead-letter writer, the consumer and the
metrics server, installs the signal handlers, and runs the loop. ``--workers N``
starts N such processes, each a member of the same consumer group (Kafka's group
is the distribution engine), each serving metrics on ``metrics.port + index``.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import replace
from types import FrameType

from processor.app import Mode, Processor, RunReport, dead_letter_identity
from processor.config import Config
from processor.dlq import DeadLetterWriter
from processor.errors import ConfigError
from processor.logs import configure as configure_logging
from processor.metrics import Metrics, MetricsServer
from processor.sink import Sender
from processor.source import Source, dead_letter_producer
from processor.transform import Transformer, load_pipeline

log = logging.getLogger(__name__)

#: /healthz fails when the loop has not turned for this long (a revoke may block
#: it for up to the drain timeout, so that is added).
LIVENESS_SLACK_S = 60.0


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
) -> tuple[Processor, object | None]:
    """The processor and its dead-letter producer (to flush at the end)."""
    sender = Sender(config.tiktok, config.delivery, metrics)
    producer = None
    dead_letters = None
    if config.kafka.dead_letter_topic and (mode is None or mode.dead_letter):
        producer = dead_letter_producer(config.kafka)
        dead_letters = DeadLetterWriter(producer, config.kafka.dead_letter_topic, time.time)
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
    config_path: str, index: int = 0, log_format: str = "json", log_level: str = "INFO"
) -> int:
    """One consumer group member, until SIGTERM/SIGINT or a fatal error."""
    configure_logging(log_format, log_level)
    config, transformer, warnings = load_pipeline(config_path, clock=time.time, require_token=True)
    for warning in warnings:
        log.warning("config: %s", warning)
    if index:
        config = replace(
            config, kafka=replace(config.kafka, client_id=f"{config.kafka.client_id}-{index}")
        )
    metrics = Metrics()
    processor, producer = build_processor(config, transformer, metrics)
    timeout = config.delivery.drain_timeout_s + LIVENESS_SLACK_S

    def alive() -> tuple[bool, str]:
        idle = time.time() - processor.last_loop
        return (idle < timeout, "ok" if idle < timeout else f"loop stuck for {idle:.0f}s")

    port = config.metrics.port + index if config.metrics.port else 0
    try:
        server = MetricsServer(
            metrics.registry,
            config.metrics.host,
            port,
            liveness=alive,
            readiness=lambda: processor.ready,
        )
    except OSError as exc:
        raise ConfigError(
            [f"metrics.port: cannot listen on {config.metrics.host}:{port}: {exc.strerror}"]
        ) from None
    server.start()
    _install_signals(processor)
    log.info(
        "processor started",
        extra={
            "worker": index,
            "topics": list(transformer.topics),
            "group": config.kafka.group_id,
            "metrics_port": server.port,
            "endpoint": config.tiktok.endpoint,
        },
    )
    # Everything built so far lives as long as the process: keep it out of the GC's way.
    gc.freeze()
    try:
        status = processor.run()
    finally:
        if producer is not None:
            producer.flush(10)  # type: ignore[attr-defined]
        server.close()
    if processor.stop_reason:
        log.error("stopped: %s", processor.stop_reason)
    return status


def _worker_entry(config_path: str, index: int, log_format: str, log_level: str) -> None:
    sys.exit(run_worker(config_path, index, log_format, log_level))


def run_workers(config_path: str, workers: int, log_format: str, log_level: str) -> int:
    """N processes in one consumer group; SIGTERM/SIGINT are passed on to each."""
    if workers == 1:
        return run_worker(config_path, 0, log_format, log_level)
    configure_logging(log_format, log_level)
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_worker_entry,
            args=(config_path, i, log_format, log_level),
            name=f"tiktok-events-worker-{i}",
        )
        for i in range(workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    codes = [child.exitcode or 0 for child in children]
    log.info("workers stopped", extra={"exit_codes": codes})
    return 0 if all(c == 0 for c in codes) else 1


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
    mode = Mode(dead_letter=False, stop_at_end=True, identity=dead_letter_identity)
    processor, _ = build_processor(config, transformer, metrics, mode=mode, topics=[topic])
    _install_signals(processor)
    processor.run()
    return processor.report
