"""Every metric the processor exports, and the ``/metrics``, ``/healthz``, ``/readyz`` server.

All names carry the ``tiktok_events_`` prefix; counters end in ``_total``, durations
in ``_seconds``. Label values come only from small fixed sets (topic, event and pixel
names from the configuration, outcomes, stages, code classes, partitions), never
from record data, URLs or ids. Metrics take a ``registry`` so tests build a fresh
``CollectorRegistry()`` and read samples with ``registry.get_sample_value``.

With ``--workers N`` the processes share one set of numbers through
prometheus-client's multiprocess mode: each worker writes its values to files in
a directory the parent makes (:func:`enable_multiprocess`), and the parent serves
their aggregate (:func:`multiprocess_registry`). Counters and histograms add up;
each gauge says how its workers' values combine (``multiprocess_mode``: the sum of
live workers for amounts, the maximum for flags and ages), and a worker that
exits stops counting in the gauges (:func:`mark_worker_dead`).

This is the only module that imports ``prometheus_client``.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from processor.httpserver import GuardedHTTPServer, ReceivedRequestHandler

PREFIX: Final = "tiktok_events"

#: The ``outcome`` label of requests: how TikTok's answer was classified.
REQUEST_OUTCOMES: Final = ("success", "partial", "retryable", "bad_payload", "fatal")
#: The ``outcome`` label of events sent.
EVENT_OUTCOMES: Final = ("accepted", "rejected")
#: The ``kind`` label of Kafka client errors (librdkafka's error callback).
KAFKA_ERROR_KINDS: Final = ("all_brokers_down", "transport", "fatal", "other")
#: The ``kind`` label of rebalances.
REBALANCE_KINDS: Final = ("assigned", "revoked", "lost")

#: The environment variable that switches prometheus-client to multiprocess mode.
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

GaugeMode = Literal["livesum", "livemax"]
#: What :class:`MetricsServer` serves: a worker's own metrics or the workers' aggregate.
Registry: TypeAlias = CollectorRegistry


class Metrics:
    """The processor's metrics, registered in ``registry``."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess: bool = False
    ) -> None:
        """``multiprocess``: this is one of several worker processes (see
        :func:`enable_multiprocess`); the values go to the shared directory."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=r)

        def gauge(
            name: str, doc: str, labels: tuple[str, ...] = (), *, workers: GaugeMode
        ) -> Gauge:
            # ``workers``: how the values of --workers processes combine (multiprocess mode);
            # a worker that exits stops counting (the "live" modes).
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=r, multiprocess_mode=workers)

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
        self.identifiers_dropped = counter(
            "identifiers_dropped",
            "Customer-information values left out of an event they could not be normalised "
            "for (the event is sent without them), by event, field and reason.",
            ("event", "field", "reason"),
        )
        # Sink.
        self.events_sent = counter(
            "events_sent",
            "Events whose delivery finished: accepted by TikTok, or rejected as bad payload.",
            ("event", "outcome"),
        )
        self.match_keys = counter(
            "match_keys",
            "Events accepted by TikTok with each match key (email, phone, external_id, "
            "ttclid, ttp, ip_user_agent; none: no key at all), by pixel, event and key.",
            ("pixel", "event", "key"),
        )
        self.requests = counter(
            "requests",
            "Requests to the Events API by classified outcome and code (the TikTok code, "
            "http_NNN, timeout, network, invalid_body or other).",
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
        self.in_flight_requests = gauge(
            "in_flight_requests", "Requests being sent now.", workers="livesum"
        )
        self.buffered_events = gauge(
            "buffered_events",
            "Events mapped and not yet finished (batched, in flight or retrying).",
            workers="livesum",
        )
        self.sink_fatal = gauge(
            "sink_fatal",
            "1 while delivery is halted by a token or permission error (40001, 40102-40105), "
            "by tenant: the pixel names of tiktok.pixels, and default for the default token.",
            ("pixel",),
            workers="livemax",
        )
        # Consumer and offsets.
        self.paused = gauge(
            "paused", "1 while consumption is paused (backpressure or halt).", workers="livemax"
        )
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions assigned (to all workers).", workers="livesum"
        )
        self.consumer_lag = gauge(
            "consumer_lag",
            "Records behind on an assigned partition: its high watermark minus the next "
            "offset to read.",
            ("topic", "partition"),
            workers="livesum",
        )
        self.partition_stalled = gauge(
            "partition_stalled_seconds",
            "How long an assigned partition with lag has made no progress (its fetch "
            "position and done watermark unmoved); 0 while it progresses or has no lag.",
            ("topic", "partition"),
            workers="livemax",
        )
        self.oldest_unfinished_age = gauge(
            "oldest_unfinished_age_seconds",
            "Age of the oldest record not yet done (what holds the committed offset back).",
            workers="livemax",
        )
        self.commits = counter(
            "commits",
            "Offset commits made (an asynchronous one counts when it is sent; the broker's "
            "refusals are counted in commit_failures_total).",
        )
        self.commit_failures = counter("commit_failures", "Offset commits that failed.")
        self.rebalances = counter(
            "rebalances", "Partitions assigned, revoked or lost, by kind.", ("kind",)
        )
        self.kafka_errors = counter(
            "kafka_errors",
            "Errors the Kafka client reported: all_brokers_down, transport (one broker "
            "connection), fatal, other.",
            ("kind",),
        )
        self._multiprocess = multiprocess

    def forget_partition(self, topic: str, partition: int) -> None:
        """A partition is no longer assigned here: its lag stops counting."""
        for gauge in (self.consumer_lag, self.partition_stalled):
            gauge.labels(topic, str(partition)).set(0)
            if not self._multiprocess:
                # Removing series is not supported in multiprocess mode: there the 0
                # stays, and the owner's value is what the sum (or maximum) shows.
                gauge.remove(topic, str(partition))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's current value (0.0 when absent), for tests."""
        sample = self.registry.get_sample_value(f"{PREFIX}_{name}", labels or {})
        return 0.0 if sample is None else sample


class HistogramTally:
    """Observations of one unlabelled histogram, counted here and added to it in one go
    (:meth:`flush`): ``Histogram.observe()`` takes a lock and walks the buckets in Python,
    too dear once per event, while this is one bisection. What the histogram shows after
    a flush is exactly what observing each value would have shown (tested)."""

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        # prometheus-client's own bucket bounds, +Inf last.
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        """Add what was observed since the last flush to the histogram."""
        counts = self._counts
        if not any(counts):
            return
        buckets = self._histogram._buckets  # the values observe() increments
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self._histogram._sum.inc(self._sum)
        self._sum = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The totals the progress log prints, summed over every label (and worker)."""

    records: float = 0.0
    accepted: float = 0.0
    retries: float = 0.0
    lag: float = 0.0
    in_flight: float = 0.0
    buffered: float = 0.0
    halted: bool = False
    paused: bool = False


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Read the progress totals from a worker's registry or the parent's aggregate."""
    sums: dict[str, float] = {}
    accepted = 0.0
    for family in registry.collect():
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
            if sample.name == f"{PREFIX}_events_sent_total":
                accepted += sample.value if sample.labels.get("outcome") == "accepted" else 0.0

    def total(name: str) -> float:
        return sums.get(f"{PREFIX}_{name}", 0.0)

    return Snapshot(
        records=total("records_consumed_total"),
        accepted=accepted,
        retries=total("retries_total"),
        lag=total("consumer_lag"),
        in_flight=total("in_flight_requests"),
        buffered=total("buffered_events"),
        halted=total("sink_fatal") > 0,
        paused=total("paused") > 0,
    )


# -- --workers N: one set of numbers from several processes -------------------------------


def enable_multiprocess(directory: Path) -> None:
    """Make worker processes started from now on write their metrics to ``directory``
    (an empty directory; prometheus-client reads the variable when it is imported,
    which a spawned worker does afresh). Call in the parent, before starting them."""
    os.environ[MULTIPROCESS_ENV] = str(directory)


def multiprocess_registry(directory: Path) -> CollectorRegistry:
    """A registry that reads every worker's files in ``directory`` at each scrape."""
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def mark_worker_dead(pid: int, directory: Path) -> None:
    """A worker exited: its gauges stop counting (its counters stay, so totals never drop)."""
    _multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


Health = Callable[[], tuple[bool, str]]
"""Returns (ok, reason) for a health endpoint."""


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` (ready to
    process: partitions assigned, not halted, broker reachable) on a background thread.

    It runs on a :class:`~processor.httpserver.GuardedHTTPServer`, so idle or slow clients
    cannot starve scrapes and probes of threads: ``timeout_s`` is how long a connection has
    to send its request (and the bound on each send of the answer), ``max_threads`` how many
    requests are answered at once, ``max_connections`` how many connections may be open.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        liveness: Health,
        readiness: Health,
        timeout_s: float = 10.0,
        max_threads: int = 8,
        max_connections: int = 256,
    ) -> None:
        handler = _handler(registry, liveness, readiness)
        self._server = GuardedHTTPServer(
            (host, port),
            handler,
            timeout_s=timeout_s,
            max_threads=max_threads,
            max_connections=max_connections,
            name="metrics-http",
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop serving, finish the answers under way and release the port (idempotent)."""
        self._server.shutdown()
        if self._thread.ident is not None:
            self._thread.join()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, liveness: Health, readiness: Health
) -> type[ReceivedRequestHandler]:
    class Handler(ReceivedRequestHandler):
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
