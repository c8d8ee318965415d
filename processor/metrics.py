"""Every metric the processor exports, and the ``/metrics``, ``/healthz``, ``/readyz`` server.

All names carry the ``tiktok_events_`` prefix; counters end in ``_total``, durations
in ``_seconds``. Label values come only from small fixed sets (topic and event
names from the configuration, outcomes, stages, code classes, partitions), never
from record data, URLs or ids. Metrics take a ``registry`` so tests build a fresh
``CollectorRegistry()`` and read samples with ``registry.get_sample_value``.

This is the only module that imports ``prometheus_client``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX: Final = "tiktok_events"

#: The ``outcome`` label of requests: how TikTok's answer was classified.
REQUEST_OUTCOMES: Final = ("success", "partial", "retryable", "bad_payload", "fatal")


class Metrics:
    """The processor's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=r)

        # Source and transform.
        self.records_consumed = counter("records_consumed", "Records read from Kafka.", ("topic",))
        self.records_filtered = counter(
            "records_filtered", "Records that no mapping's `when` rule matched.", ("topic",)
        )
        self.records_dead_lettered = counter(
            "records_dead_lettered",
            "Records (or one mapping's event of a record) written to the dead-letter topic.",
            ("topic", "stage"),
        )
        self.events_mapped = counter("events_mapped", "Events made by mappings.", ("event",))
        # Sink.
        self.events_sent = counter(
            "events_sent",
            "Events whose delivery finished: accepted by TikTok, or rejected as bad payload.",
            ("event", "outcome"),
        )
        self.requests = counter(
            "requests",
            "Requests to the Events API by classified outcome and code (the TikTok code, "
            "http_NNN, timeout, network, invalid_body, encode_error or other).",
            ("outcome", "code"),
        )
        self.retries = counter("retries", "Requests retried, by reason.", ("reason",))
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from sending a request to its classified answer.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size_events",
            "Events per request.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "From the record's Kafka timestamp to TikTok accepting its event.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.in_flight_requests = gauge("in_flight_requests", "Requests being sent now.")
        self.buffered_events = gauge(
            "buffered_events",
            "Events mapped and not yet finished (batched, in flight or retrying).",
        )
        self.sink_fatal = gauge(
            "sink_fatal",
            "1 while delivery is halted by a token or permission error (40001, 40102-40105).",
        )
        # Consumer and offsets.
        self.paused = gauge("paused", "1 while consumption is paused (backpressure or halt).")
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions assigned to this member."
        )
        self.consumer_lag = gauge(
            "consumer_lag", "High watermark minus the next offset to read.", ("topic", "partition")
        )
        self.oldest_unfinished_age = gauge(
            "oldest_unfinished_age_seconds",
            "Age of the oldest record not yet done (what holds the committed offset back).",
        )
        self.commits = counter("commits", "Offset commits that succeeded.")
        self.commit_failures = counter("commit_failures", "Offset commits that failed.")
        self.rebalances = counter("rebalances", "Partitions assigned or revoked.", ("kind",))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0.0 when absent), for tests and the progress log."""
        sample = self.registry.get_sample_value(f"{PREFIX}_{name}", labels or {})
        return 0.0 if sample is None else sample


Health = Callable[[], tuple[bool, str]]
"""Returns (ok, reason) for a health endpoint."""


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` (ready to
    process: partitions assigned, not halted, broker reachable) on a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        liveness: Health,
        readiness: Health,
    ) -> None:
        handler = _handler(registry, liveness, readiness)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, liveness: Health, readiness: Health
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, reason = (liveness if path == "/healthz" else readiness)()
                body = (reason or ("ok" if ok else "not ok")) + "\n"
                self._reply(200 if ok else 503, body.encode(), "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found\n", "text/plain; charset=utf-8")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds would drown the logs

    return Handler
