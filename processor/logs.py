"""Logging: JSON lines by default, human-readable text with ``--log-format text``.

Structured fields passed through ``extra=`` (topic, partition, counts…) become
JSON keys; a worker of ``--workers N`` adds its ``worker`` index to every line.
Nothing here ever formats a record's content: callers log counts, names and
reasons, never PII or the token.

For people watching a terminal, :class:`ProgressLog` writes a one-line summary
every few seconds (records/s, accepted events/s, lag, in flight, retries) from
the metrics, so the numbers are the ones Prometheus sees.
"""

from __future__ import annotations

import logging
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
        return orjson.dumps(entry, default=str).decode()


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
