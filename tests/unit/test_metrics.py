"""Metrics: their names, the ``/metrics`` ``/healthz`` ``/readyz`` server, the ``--workers``
aggregate, the progress line, the loop's metric and readiness wiring, and the metric names
the Grafana dashboard and the alert rules rely on (so renaming a metric fails here, not on a
dashboard at 3 a.m.).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from processor.cli import build_parser
from processor.config import load_config
from processor.kafka.api import PartitionLag
from processor.kafka.consumer import BrokerHealth
from processor.logs import ProgressLog
from processor.loop import NO_PARTITIONS
from processor.metrics import (
    EVENT_OUTCOMES,
    KAFKA_ERROR_KINDS,
    MULTIPROCESS_ENV,
    PREFIX,
    REBALANCE_KINDS,
    REQUEST_OUTCOMES,
    HistogramTally,
    Metrics,
    MetricsServer,
    Snapshot,
    enable_multiprocess,
    mark_worker_dead,
    multiprocess_registry,
    snapshot,
)
from processor.service.board import WorkerBoard
from processor.service.supervisor import Supervisor
from processor.sink.classify import RetryReason
from processor.types import Stage
from tests.conftest import EXAMPLE_CONFIG, ROOT
from tests.promql import exported_names, metric_names, template_metric_names
from tests.unit.test_loop import TP0, TP1, harness, page_views

CHART_FILES = ROOT / "helm" / "tiktok-events-processor" / "files"
DASHBOARD = CHART_FILES / "dashboard.json"
ALERTS = CHART_FILES / "alerts.yaml"

#: Labels a metric may carry: each takes values from a small fixed set (docs/ARCHITECTURE.md, "Metrics and health").
ALLOWED_LABELS = {
    "topic",
    "partition",
    "stage",
    "event",
    "field",
    "outcome",
    "code",
    "reason",
    "kind",
    "pixel",
    "key",
}

#: What the issue asks for: (exported name, type, labels).
REQUIRED = [
    ("records_consumed_total", "counter", {"topic"}),
    ("records_filtered_total", "counter", {"topic"}),
    ("records_dead_lettered_total", "counter", {"topic", "stage"}),
    ("events_mapped_total", "counter", {"event"}),
    ("events_sent_total", "counter", {"event", "outcome"}),
    ("match_keys_total", "counter", {"pixel", "event", "key"}),
    ("requests_total", "counter", {"outcome", "code"}),
    ("retries_total", "counter", {"reason"}),
    ("commits_total", "counter", set()),
    ("commit_failures_total", "counter", set()),
    ("request_duration_seconds", "histogram", set()),
    ("batch_size_events", "histogram", set()),
    ("end_to_end_latency_seconds", "histogram", set()),
    ("in_flight_requests", "gauge", set()),
    ("buffered_events", "gauge", set()),
    ("paused", "gauge", set()),
    ("sink_fatal", "gauge", {"pixel"}),
    ("consumer_lag", "gauge", {"topic", "partition"}),
    ("partition_stalled_seconds", "gauge", {"topic", "partition"}),
    ("oldest_unfinished_age_seconds", "gauge", set()),
    ("assigned_partitions", "gauge", set()),
]


def families(registry: CollectorRegistry) -> dict[str, Any]:
    return {f.name: f for f in registry.collect()}


def label_names(metrics: Metrics) -> dict[str, set[str]]:
    """Each metric's label names (from the metric objects: labelled ones have no samples)."""
    out = {}
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name is not None:
            out[name] = set(value._labelnames)
    return out


# -- names ----------------------------------------------------------------------------


def test_every_metric_the_issue_asks_for_exists_with_its_type_and_labels() -> None:
    metrics = Metrics()
    found = families(metrics.registry)
    labels = label_names(metrics)
    for name, kind, expected_labels in REQUIRED:
        base = f"{PREFIX}_{name}".removesuffix("_total")
        assert base in found, f"{name} is missing"
        assert found[base].type == kind, name
        assert labels[base] == expected_labels, name


def test_metric_names_follow_the_conventions() -> None:
    metrics = Metrics()
    labels = label_names(metrics)
    for family in metrics.registry.collect():
        assert family.name.startswith(f"{PREFIX}_"), family.name
        assert family.documentation.strip(), f"{family.name} has no help text"
        assert labels[family.name] <= ALLOWED_LABELS, family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_events")), "a histogram names its unit"
        if "duration" in family.name or "latency" in family.name or "age" in family.name:
            assert family.name.endswith("_seconds"), family.name


def test_label_value_sets_are_fixed_and_match_the_code_that_sets_them() -> None:
    assert {r.value for r in RetryReason} == {
        "timeout", "network", "http_429", "http_5xx", "rate_limited", "server", "invalid_body",
    }  # fmt: skip
    assert set(REQUEST_OUTCOMES) == {"success", "partial", "retryable", "bad_payload", "fatal"}
    assert set(EVENT_OUTCOMES) == {"accepted", "rejected"}
    assert set(KAFKA_ERROR_KINDS) == {"all_brokers_down", "transport", "fatal", "other"}
    assert set(REBALANCE_KINDS) == {"assigned", "revoked", "lost"}
    assert {str(s) for s in Stage} >= {"decode", "input-schema", "mapping", "output-schema", "api"}


# -- the server -----------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, Metrics, dict[str, tuple[bool, str]]]]:
    """A server on a fresh registry; the test sets liveness and readiness in the dict."""
    metrics = Metrics(CollectorRegistry())
    state = {"alive": (True, "ok"), "ready": (False, NO_PARTITIONS)}
    server = MetricsServer(
        metrics.registry,
        "127.0.0.1",
        0,
        liveness=lambda: state["alive"],
        readiness=lambda: state["ready"],
    )
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", metrics, state
    finally:
        server.close()


def test_metrics_endpoint_serves_the_registry_in_the_text_format(
    served: tuple[str, Metrics, dict[str, tuple[bool, str]]],
) -> None:
    url, metrics, _ = served
    metrics.records_consumed.labels("web.pageviews").inc(3)
    reply = httpx.get(f"{url}/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    assert 'tiktok_events_records_consumed_total{topic="web.pageviews"} 3.0' in reply.text
    assert "# HELP tiktok_events_sink_fatal " in reply.text
    assert httpx.get(f"{url}/metrics?name[]=x").status_code == 200


def test_health_endpoints_answer_200_or_503_with_the_reason(
    served: tuple[str, Metrics, dict[str, tuple[bool, str]]],
) -> None:
    url, _, state = served
    assert (httpx.get(f"{url}/healthz").status_code, httpx.get(f"{url}/healthz").text) == (
        200,
        "ok\n",
    )
    ready = httpx.get(f"{url}/readyz")
    assert (ready.status_code, ready.text) == (503, f"{NO_PARTITIONS}\n")
    state["ready"] = (True, "ok")
    assert httpx.get(f"{url}/readyz").status_code == 200
    state["ready"] = (False, "halted: 40105 access token is invalid")
    ready = httpx.get(f"{url}/readyz")
    assert (ready.status_code, ready.text) == (503, "halted: 40105 access token is invalid\n")
    state["alive"] = (False, "loop stuck for 95s")
    alive = httpx.get(f"{url}/healthz")
    assert (alive.status_code, alive.text) == (503, "loop stuck for 95s\n")
    assert httpx.get(f"{url}/other").status_code == 404


def test_a_tally_flushed_shows_what_observing_each_value_shows() -> None:
    observed, tallied = Metrics(), Metrics()
    tally = HistogramTally(tallied.end_to_end_latency)
    # Each bound itself, between bounds, zero, above the last finite bound.
    values = [0.0, 0.05, 0.07, 0.1, 1.0, 2.4, 3599.0, 3600.0, 3600.5, 90_000.0] * 3
    for v in values[:12]:
        observed.end_to_end_latency.observe(v)
        tally.observe(v)
    tally.flush()
    tally.flush()  # nothing new: adds nothing
    for v in values[12:]:
        observed.end_to_end_latency.observe(v)
        tally.observe(v)
    assert tallied.value("end_to_end_latency_seconds_count") == 12  # not yet flushed
    tally.flush()

    def samples(m: Metrics) -> list[tuple[str, dict[str, str], float]]:
        (family,) = [
            f for f in m.registry.collect() if f.name == f"{PREFIX}_end_to_end_latency_seconds"
        ]
        return [
            (s.name, s.labels, s.value) for s in family.samples if not s.name.endswith("_created")
        ]

    got, want = samples(tallied), samples(observed)
    assert [(name, labels) for name, labels, _ in got] == [(n, lb) for n, lb, _ in want]
    assert [value for *_, value in got] == pytest.approx([value for *_, value in want])
    assert tallied.value("end_to_end_latency_seconds_count") == len(values)
    assert tallied.value("end_to_end_latency_seconds_bucket", {"le": "0.05"}) == 6


# -- --workers N: one aggregate of several processes ----------------------------------

_WORKER = """
import os, sys
from processor.metrics import HistogramTally, Metrics
consumed, in_flight, fatal, lost = (int(a) for a in sys.argv[1:5])
m = Metrics(multiprocess=True)
latency = HistogramTally(m.end_to_end_latency)
latency.observe(0.3)
latency.observe(7.0)
latency.flush()
m.records_consumed.labels("web.pageviews").inc(consumed)
m.events_sent.labels("ViewContent", "accepted").inc(consumed)
m.in_flight_requests.set(in_flight)
m.sink_fatal.labels("default").set(fatal)
m.oldest_unfinished_age.set(in_flight * 10)
m.request_duration.observe(0.2)
m.consumer_lag.labels("web.pageviews", "0").set(7)
m.consumer_lag.labels("web.pageviews", "1").set(5)
if lost:
    m.forget_partition("web.pageviews", 0)
print(os.getpid())
"""


def _worker(directory: Path, *args: int) -> int:
    env = {**os.environ, MULTIPROCESS_ENV: str(directory)}
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(proc.stdout.strip())


def test_workers_metrics_add_up_and_gauges_combine_by_their_mode(tmp_path: Path) -> None:
    first = _worker(tmp_path, 100, 2, 0, 1)  # lost partition 0 to the second
    second = _worker(tmp_path, 50, 3, 1, 0)
    registry = multiprocess_registry(tmp_path)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"{PREFIX}_{name}", labels)

    assert value("records_consumed_total", topic="web.pageviews") == 150
    assert value("request_duration_seconds_count") == 2
    assert value("end_to_end_latency_seconds_count") == 4  # tallied, then flushed
    assert value("end_to_end_latency_seconds_bucket", le="0.5") == 2
    assert value("end_to_end_latency_seconds_sum") == pytest.approx(14.6)
    assert value("in_flight_requests") == 5  # livesum
    assert value("sink_fatal", pixel="default") == 1  # livemax: one halted worker is a halt
    assert value("oldest_unfinished_age_seconds") == 30  # livemax
    assert value("consumer_lag", topic="web.pageviews", partition="0") == 7  # the owner's only
    assert value("consumer_lag", topic="web.pageviews", partition="1") == 10
    totals = snapshot(registry)
    assert (totals.records, totals.accepted, totals.in_flight, totals.halted) == (150, 150, 5, True)
    mark_worker_dead(second, tmp_path)
    assert value("in_flight_requests") == 2  # a dead worker's gauges stop counting
    assert value("sink_fatal", pixel="default") == 0
    assert value("records_consumed_total", topic="web.pageviews") == 150  # counters never drop
    mark_worker_dead(first, tmp_path)
    assert value("in_flight_requests") is None


def test_enable_multiprocess_points_new_workers_at_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV, "unset after the test")  # restored after the test
    enable_multiprocess(tmp_path)
    assert os.environ[MULTIPROCESS_ENV] == str(tmp_path)


class _Child:
    def __init__(self, exitcode: int | None = None) -> None:
        self.exitcode = exitcode


def test_the_parent_is_ready_when_every_worker_is_and_one_has_partitions(
    tmp_path: Path,
) -> None:
    config = load_config(EXAMPLE_CONFIG, environ={})
    supervisor = Supervisor(config, tmp_path, 2)
    board = supervisor._board
    supervisor._children = [_Child(), _Child()]  # type: ignore[list-item]
    assert supervisor.ready() == (False, "worker 0: starting; worker 1: starting")
    assert supervisor.alive() == (True, "ok")
    now = time.time()
    board.publish(0, now, True, "ok")
    board.publish(1, now, False, NO_PARTITIONS)
    assert supervisor.ready() == (True, "ok: 1 of 2 workers have partitions")
    board.publish(0, now, False, NO_PARTITIONS)
    assert supervisor.ready() == (False, NO_PARTITIONS)
    board.publish(1, now, False, "halted: 40105 access token is invalid")
    assert supervisor.ready() == (False, "worker 1: halted: 40105 access token is invalid")
    board.publish(1, now - 3600, True, "ok")
    assert supervisor.alive()[0] is False
    assert "worker 1: loop stuck" in supervisor.alive()[1]
    board.publish(1, now, True, "ok")
    supervisor._children[1] = _Child(exitcode=-9)  # type: ignore[assignment]
    assert supervisor.alive() == (False, "worker 1 exited with status -9")
    assert supervisor.ready() == (False, "worker 1: exited with status -9")
    supervisor._stopping.set()
    assert supervisor.ready() == (False, "stopping")


def test_the_board_keeps_long_reasons_within_their_slot(tmp_path: Path) -> None:
    board = WorkerBoard(multiprocessing.get_context("spawn"), 1)
    board.publish(0, 12.5, False, "é" * 400)
    last_loop, ready, reason = board.read(0)
    assert (last_loop, ready) == (12.5, False)
    assert 0 < len(reason.encode()) < WorkerBoard.REASON_BYTES


# -- the progress line ----------------------------------------------------------------


def test_progress_line_gives_rates_since_the_last_line_and_the_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    readings = iter(
        [
            Snapshot(records=1000, accepted=400, retries=2),
            Snapshot(
                records=2000, accepted=900, retries=6, lag=12, in_flight=3, buffered=40, paused=True
            ),
            Snapshot(records=2000, accepted=900, retries=6, lag=30, halted=True, paused=True),
        ]
    )
    clock = iter([0.0, 0.0, 10.0, 20.0])
    progress = ProgressLog(lambda: next(readings), 10, clock=lambda: next(clock))
    progress._last, progress._last_at = progress._read(), progress._clock()
    with caplog.at_level(logging.INFO, logger="processor.progress"):
        first = progress.tick()
        second = progress.tick()
    assert first == (
        "progress: 100 records/s, 50 events accepted/s, lag 12, in flight 3, buffered 40, "
        "retries 0.4/s (6 in all); consumption paused (backpressure)"
    )
    assert second.startswith("progress: 0 records/s, 0 events accepted/s, lag 30,")
    assert second.endswith("; delivery HALTED (token or permission error, see /readyz)")
    assert [r.getMessage() for r in caplog.records] == [first, second]
    assert caplog.records[0].lag == 12  # type: ignore[attr-defined]


def test_progress_log_writes_lines_on_its_own_thread(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    metrics.records_consumed.labels("web.pageviews").inc(5)
    progress = ProgressLog(lambda: snapshot(metrics.registry), 0.05)
    with caplog.at_level(logging.INFO, logger="processor.progress"):
        progress.start()
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
        progress.close()
    assert caplog.records, "no progress line"
    assert caplog.records[0].getMessage().startswith("progress: ")


def test_run_takes_a_progress_interval() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--config", "c.yaml"]).progress_interval == 10.0
    args = parser.parse_args(["run", "--config", "c.yaml", "--progress-interval", "2.5"])
    assert args.progress_interval == 2.5


def test_snapshot_sums_every_label_and_counts_only_accepted_events() -> None:
    m = Metrics()
    m.records_consumed.labels("a").inc(3)
    m.records_consumed.labels("b").inc(4)
    m.events_sent.labels("Lead", "accepted").inc(5)
    m.events_sent.labels("Lead", "rejected").inc(100)
    m.retries.labels("timeout").inc(2)
    m.consumer_lag.labels("a", "0").set(10)
    m.consumer_lag.labels("a", "1").set(1)
    assert snapshot(m.registry) == Snapshot(records=7, accepted=5, retries=2, lag=11)


# -- the loop's wiring ----------------------------------------------------------------


def _turn_until(h: Any, condition: Callable[[], bool], turns: int = 10) -> None:
    for _ in range(turns):
        h.turn()
        if condition():
            return
    raise AssertionError("condition not reached")


def test_the_loop_counts_records_events_and_latency_and_updates_the_gauges() -> None:
    h = harness(max_batch_events=2)
    h.publish(0, page_views(0, 2))
    h.publish(1, page_views(1, 1, important=False))
    h.source.lag = lambda: {TP0: PartitionLag(5, 0), TP1: PartitionLag(0, 1)}  # type: ignore[method-assign]
    h.turn(3)
    m = h.metrics
    assert m.value("records_consumed_total", {"topic": "web.pageviews"}) == 3
    assert m.value("records_filtered_total", {"topic": "web.pageviews"}) == 1
    assert m.value("events_mapped_total", {"event": "ViewContent"}) == 2
    assert m.value("buffered_events") == 2
    assert m.value("assigned_partitions") == 2
    assert m.value("consumer_lag", {"topic": "web.pageviews", "partition": "0"}) == 5
    assert m.value("oldest_unfinished_age_seconds") > 0
    (batch,) = h.sender.submitted
    h.sender.accept(batch)
    h.turn(3)
    assert m.value("end_to_end_latency_seconds_count") == 2
    assert m.value("buffered_events") == 0
    assert m.value("commits_total") >= 1


def test_a_revoked_partitions_lag_series_goes_away() -> None:
    h = harness()
    h.source.lag = lambda: {TP0: PartitionLag(5, 0), TP1: PartitionLag(3, 0)}  # type: ignore[method-assign]
    h.turn(3)
    lag = {"topic": "web.pageviews", "partition": "0"}
    assert h.metrics.registry.get_sample_value("tiktok_events_consumer_lag", lag) == 5
    h.source.revoke([TP0])
    assert h.metrics.registry.get_sample_value("tiktok_events_consumer_lag", lag) is None
    other = {"topic": "web.pageviews", "partition": "1"}
    assert h.metrics.registry.get_sample_value("tiktok_events_consumer_lag", other) == 3
    assert h.metrics.value("rebalances_total", {"kind": "revoked"}) == 1
    assert h.metrics.value("assigned_partitions") == 1


def _stats(*states: str) -> str:
    return json.dumps(
        {"brokers": {f"b{i}": {"nodeid": i, "state": s} for i, s in enumerate(states)}}
    )


def test_broker_health_sees_an_outage_start_and_end_and_counts_kafka_errors() -> None:
    # What the loop's readiness reads as the consumer's ``unreachable`` (tests/unit/test_loop.py).
    metrics = Metrics()
    health = BrokerHealth(metrics)
    settings = health.settings()
    assert settings["statistics.interval.ms"] > 0
    settings["error_cb"](KafkaError(KafkaError._TRANSPORT, "b1: Connect failed"))
    assert health.down is None  # one broker connection: not an outage
    settings["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert health.down == "Kafka brokers unreachable: 1/1 brokers are down"
    settings["stats_cb"](_stats("DOWN", "TRY_CONNECT"))
    assert health.down is not None
    settings["stats_cb"](_stats("DOWN", "UP"))
    assert health.down is None
    settings["error_cb"](KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    health.answered()  # a record or an assignment is a broker answering
    assert health.down is None
    assert metrics.value("kafka_errors_total", {"kind": "all_brokers_down"}) == 2
    assert metrics.value("kafka_errors_total", {"kind": "transport"}) == 1


def test_broker_health_keeps_a_fatal_error_for_the_loop_to_stop_on() -> None:
    metrics = Metrics()
    health = BrokerHealth(metrics)
    health.settings()["error_cb"](
        KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    )
    assert health.fatal == "fenced by a newer instance"
    assert metrics.value("kafka_errors_total", {"kind": "fatal"}) == 1


# -- the dashboard and the alert rules ------------------------------------------------


def test_the_promql_reader_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{job=~"$job", x="b c"}'
        "[$__rate_interval]))) / on (job) group_left sum without (pod) (b offset 5m) > 1e3 "
        "and deriv(c[10m:1m]) > 0 unless d unless on() vector(1)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    assert template_metric_names('label_values(x{job=~"$job"}, instance)') == {"x"}
    assert template_metric_names("label_values(job)") == set()


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in _panels(board["panels"])
        for target in panel.get("targets", [])
    ]


def test_every_dashboard_query_uses_only_metrics_the_processor_exports() -> None:
    exported = exported_names(Metrics().registry)
    board = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for panel in _panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            assert names <= exported, f"{panel['title']}: unknown {names - exported}"
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            used |= names
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            names = template_metric_names(variable["query"]["query"])
            assert names <= exported, f"variable {variable['name']}: unknown {names - exported}"
    shown = {n.removeprefix(f"{PREFIX}_") for n in used}
    assert shown >= {
        "records_consumed_total", "records_filtered_total", "events_mapped_total",
        "events_sent_total", "requests_total", "retries_total", "records_dead_lettered_total",
        "consumer_lag", "end_to_end_latency_seconds_bucket", "request_duration_seconds_bucket",
        "in_flight_requests", "buffered_events", "paused", "sink_fatal",
        "oldest_unfinished_age_seconds", "assigned_partitions", "commits_total",
        "commit_failures_total", "batch_size_events_bucket",
    }  # fmt: skip


def test_the_dashboard_is_portable_and_its_panels_do_not_overlap() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in board  # file provisioning does not substitute import inputs
    (source,) = [v for v in board["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    panels = list(_panels(board["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_has_severity_summary_description_and_a_runbook_hint() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "TikTokEventsDeliveryHalted",
        "TikTokEventsConsumerLagGrowing",
        "TikTokEventsDeadLetterRateHigh",
        "TikTokEventsRetryStorm",
        "TikTokEventsNothingAccepted",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']}: no {key}"


def test_every_metric_in_the_alert_rules_exists_in_the_processor() -> None:
    exported = exported_names(Metrics().registry)
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: unknown {names - exported}"


def test_a_partition_with_lag_and_no_progress_fails_readiness_and_shows_in_its_gauge() -> None:
    h = harness(stall_timeout_s=20)
    lags = {TP0: PartitionLag(5, 0), TP1: PartitionLag(0, 9)}
    h.source.lag = lambda: lags  # type: ignore[method-assign]
    h.turn()
    assert h.processor.ready == (True, "ok")
    _turn_until(h, lambda: not h.processor.ready[0], 100)
    _, reason = h.processor.ready
    assert reason.startswith("stalled: partition web.pageviews[0] has lag 5 and made no progress")
    stalled = {"topic": "web.pageviews", "partition": "0"}
    assert h.metrics.value("partition_stalled_seconds", stalled) >= 20
    assert h.metrics.value("partition_stalled_seconds", {**stalled, "partition": "1"}) == 0
    lags[TP0] = PartitionLag(4, 1)  # it fetched again
    _turn_until(h, lambda: h.processor.ready[0], 100)
    assert h.metrics.value("partition_stalled_seconds", stalled) < 20
