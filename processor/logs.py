"""Logging: JSON lines by default, human-readable text with ``--log-format text``.

Structured fields passed through ``extra=`` (topic, partition, counts…) become
JSON keys; a worker of ``--workers N`` adds its ``worker`` index to every line.
Nothing here ever formats a record's content: callers log counts, names and
reasons, never PII or the token.

For people watching a terminal, :class:`ProgressLog` writes a one-line summary
every few seconds (records/s, accepted events/s, lag, in flight, retries) from
the metrics, so the numbers are the ones Prometheus sees.

librdkafka's own lines go to :func:`librdkafka_logger`, whose
:class:`KafkaConnectionNoise` filter turns a broker outage's flood of failed
connections into a warning every half minute per broker.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from processor.metrics import Snapshot

_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError) as exc:
            # A field orjson cannot encode (an integer past 64 bits, a key of another
            # type) must not cost the line: every field as text, and why.
            safe = {str(k): v if isinstance(v, str) else repr(v) for k, v in entry.items()}
            safe["log_error"] = f"fields not encodable as JSON: {exc}"
            return orjson.dumps(safe).decode()


class _WorkerTag(logging.Filter):
    """Stamps every record with the worker index (a JSON key; ``wN`` in text)."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self._worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._worker
        return True


def configure(log_format: str = "json", level: str = "INFO", *, worker: int | None = None) -> None:
    """Configure the root logger once, at start-up (never at import time). ``worker``:
    this process is worker N of ``--workers``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        tag = "" if worker is None else f"w{worker} "
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(name)s: %(message)s", "%H:%M:%S")
        )
    if worker is not None:
        handler.addFilter(_WorkerTag(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # librdkafka logs through the consumer's logger; keep its chatter at warning.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


#: The logger librdkafka's lines go to: every Kafka client's (consumer, dead-letter
#: producer, lag probe), a child of the source's, so its level and handlers apply.
LIBRDKAFKA_LOGGER: Final = "processor.kafka.librdkafka"
#: At most one failed-connection line per broker in this many seconds.
CONNECTION_FAILURE_INTERVAL_S: Final = 30.0

# "FAIL [rdkafka#consumer-1] [thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap:
# Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)":
# facility, client, thread, then the broker the line is about and what happened.
_KAFKA_LINE = re.compile(r"\S+ \[[^\]]*\] \[thrd:.*?\]: (?P<broker>\S+?): (?P<text>.*)", re.DOTALL)
_TRANSPORT_FAILURE = re.compile(
    r"Connect to \S+ failed|Connection refused|Disconnected|Failed to resolve"
    r"|Connection reset by peer",
    re.IGNORECASE,
)
# Lines that point at the client's settings rather than at a broker being away.
_SETTINGS_HINT = re.compile(r"SSL|SASL|security\.protocol|certificate|authenticat", re.IGNORECASE)
# "127.0.0.1:9092/bootstrap" and "127.0.0.1:9092/1" are the same broker.
_BROKER_SUFFIX = re.compile(r"/(?:\d+|bootstrap)$")


class KafkaConnectionNoise(logging.Filter):
    """librdkafka's failed-connection lines as warnings, at most one per broker every
    ``interval_s`` seconds.

    librdkafka logs every failed attempt to reach a broker at error level (``Connect to
    ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)``), up to
    20 a second per client while the broker is away. The pipeline reports the outage
    itself once, at error level ("Kafka unreachable", and on ``/readyz``); these lines
    only say that it goes on. So a connection failure (refused, failed, disconnected,
    reset, a name that does not resolve) is lowered to warning, and only the first for a
    broker in each interval is let through: the next one that is says how many were
    held back. A line that points at the settings (TLS, SASL, ``security.protocol``,
    certificates) keeps its level and is never held back; lines below warning pass
    as they are. Thread-safe.
    """

    def __init__(
        self,
        interval_s: float = CONNECTION_FAILURE_INTERVAL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not interval_s > 0:
            raise ValueError("interval_s must be above 0")
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # Per broker: when a line last passed, and how many were held back since.
        self._brokers: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        line = _KAFKA_LINE.match(message)
        if line is None:
            return True
        text = line.group("text")
        if not _TRANSPORT_FAILURE.search(text) or _SETTINGS_HINT.search(text):
            return True
        broker = _BROKER_SUFFIX.sub("", line.group("broker"))
        now = self._clock()
        with self._lock:
            last = self._brokers.get(broker)
            if last is not None and now - last[0] < self._interval_s:
                self._brokers[broker] = (last[0], last[1] + 1)
                return False
            held_back = 0 if last is None else last[1]
            self._brokers[broker] = (now, 0)
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        if held_back:
            record.msg = (
                f"{message} (and {held_back} more failed connections to this broker "
                "since the last such line)"
            )
            record.args = ()
        return True


_LIBRDKAFKA_SETUP = threading.Lock()


def librdkafka_logger() -> logging.Logger:
    """The logger to give every Kafka client (``logger=``), with one
    :class:`KafkaConnectionNoise` on it for the whole process (added at the first call):
    one broker's failures are held back across all the clients that reach it."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    with _LIBRDKAFKA_SETUP:
        if not any(isinstance(f, KafkaConnectionNoise) for f in logger.filters):
            logger.addFilter(KafkaConnectionNoise())
    return logger


class ProgressLog:
    """Logs a one-line progress summary every ``interval_s`` seconds on its own thread:

    ``progress: 1520 records/s, 1204 events accepted/s, lag 0, in flight 2, buffered 310,
    retries 0/s (12 in all)``, plus ``; delivery HALTED`` or ``; consumption paused``.

    ``read`` returns the current totals (:func:`processor.metrics.snapshot`).
    """

    def __init__(
        self,
        read: Callable[[], Snapshot],
        interval_s: float,
        *,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be above 0")
        self._read = read
        self._interval = interval_s
        self._log = logger or logging.getLogger("processor.progress")
        self._clock = clock
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-log", daemon=True)
        self._last = Snapshot()
        self._last_at = clock()

    def start(self) -> None:
        self._last, self._last_at = self._read(), self._clock()
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.tick()
            except Exception:  # a broken summary must never take the worker down
                self._log.exception("progress summary failed")

    def tick(self) -> str:
        """Log (and return) one summary line since the previous one."""
        now, current = self._clock(), self._read()
        last, elapsed = self._last, max(1e-9, now - self._last_at)
        self._last, self._last_at = current, now

        def per_s(value: float, before: float) -> float:
            return max(0.0, value - before) / elapsed

        line = (
            f"progress: {per_s(current.records, last.records):.0f} records/s, "
            f"{per_s(current.accepted, last.accepted):.0f} events accepted/s, "
            f"lag {current.lag:.0f}, in flight {current.in_flight:.0f}, "
            f"buffered {current.buffered:.0f}, "
            f"retries {per_s(current.retries, last.retries):.1f}/s ({current.retries:.0f} in all)"
        )
        if current.halted:
            line += "; delivery HALTED (token or permission error, see /readyz)"
        elif current.paused:
            line += "; consumption paused (backpressure)"
        self._log.info(
            line,
            extra={
                "records_total": int(current.records),
                "accepted_total": int(current.accepted),
                "lag": int(current.lag),
                "in_flight": int(current.in_flight),
                "retries_total": int(current.retries),
            },
        )
        return line
