"""What operators see, end to end: ``tiktok-events run`` as a subprocess against a real Kafka
broker and the sandbox, read through its ``/metrics``, ``/healthz``, ``/readyz`` and logs;
and the alert rules and dashboard queries checked by ``promtool`` (Debian's, fetched into
.cache/tools/ by devkit/promtool.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devkit import promtool as promtool_fetcher
from devkit.kafka import KafkaCluster, TopicFactory, produce, unique_name
from processor.matchkeys import key_labels
from processor.sample import SampleRecord
from processor.sandbox import Sandbox
from processor.transform import load_pipeline
from tests.conftest import ROOT
from tests.integration.pipeline import TOKEN, MakePipeline, Pipeline, ProcessorProcess, wait_for
from tests.unit.test_metrics import ALERTS, dashboard_exprs

PIXEL = "D34FV3JC77U1PDQ72P1G"

Processors = Callable[..., ProcessorProcess]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

ALERT_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yaml"
PROGRESS = re.compile(
    r"progress: \d+ records/s, \d+ events accepted/s, lag \d+, in flight \d+, buffered \d+, "
    r"retries [\d.]+/s \(\d+ in all\)"
)


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Debian's promtool, fetched once into .cache/tools/ (`make tools` does it up front)."""
    return promtool_fetcher.fetch()


def scrape_text(port: int) -> str:
    reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    reply.raise_for_status()
    return reply.text


def scrape(port: int) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(scrape_text(port)):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    out: Counter[str] = Counter()
    wanted = set(labels.items())
    for (n, ls), v in samples.items():
        if n == name and wanted <= ls and v:
            out[dict(ls)[label]] += int(v)
    return dict(out)


def get(pipeline: Pipeline, path: str) -> tuple[int | None, str]:
    try:
        reply = httpx.get(f"http://127.0.0.1:{pipeline.metrics_port}{path}", timeout=2)
    except httpx.HTTPError:
        return None, ""
    return reply.status_code, reply.text.strip()


def check_metrics(promtool: Path, text: str) -> None:
    lint = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, ""), text


# -- promtool on the rules and the dashboard --------------------------------------------


def test_alert_rules_pass_promtool_check_and_their_unit_tests(promtool: Path) -> None:
    check = subprocess.run(
        [str(promtool), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    tests = subprocess.run(
        [str(promtool), "test", "rules", str(ALERT_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def test_every_dashboard_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    # promtool parses each query as a recording rule; Grafana's variables get plain values.
    grafana = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "6h",
        "$job": ".*",
        "$instance": ".*",
    }
    rules = []
    for i, (title, query) in enumerate(dashboard_exprs()):
        expr = query
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: an unknown variable in {query}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run(
        [str(promtool), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


# -- a running processor ----------------------------------------------------------------


def test_metrics_count_every_record_and_pass_promtools_lint(
    make_pipeline: MakePipeline, processors: Processors, promtool: Path
) -> None:
    pipeline = make_pipeline()
    records, expected = pipeline.sample(600, seed=71)
    events = sum(expected.values())
    processor = processors(pipeline)
    pipeline.wait_delivered(expected)
    port = pipeline.metrics_port
    wait_for(
        lambda: (
            total(scrape(port), "tiktok_events_events_sent_total", outcome="accepted") == events
            and total(scrape(port), "tiktok_events_buffered_events") == 0
            # The first commit after the last acceptance comes up to commit_interval_ms later.
            and total(scrape(port), "tiktok_events_commits_total") > 0
        ),
        30,
        "the counters to catch up",
    )
    s = scrape(port)
    assert total(s, "tiktok_events_records_consumed_total") == 600
    assert by_label(s, "tiktok_events_records_consumed_total", "topic") == dict(
        Counter(r.topic for r in records)
    )
    assert total(s, "tiktok_events_records_filtered_total") == 600 - events
    assert by_label(s, "tiktok_events_events_mapped_total", "event") == dict(expected)
    sent = "tiktok_events_events_sent_total"
    assert by_label(s, sent, "event", outcome="accepted") == dict(expected)
    assert total(s, sent, outcome="rejected") == 0
    assert total(s, "tiktok_events_records_dead_lettered_total") == 0
    requests = total(s, "tiktok_events_requests_total")
    assert requests == total(s, "tiktok_events_requests_total", outcome="success", code="0") > 0
    assert total(s, "tiktok_events_request_duration_seconds_count") == requests
    assert total(s, "tiktok_events_batch_size_events_count") == requests
    assert total(s, "tiktok_events_batch_size_events_sum") == events
    assert total(s, "tiktok_events_end_to_end_latency_seconds_count") == events
    assert total(s, "tiktok_events_retries_total") == 0
    keys = "tiktok_events_match_keys_total"
    for event, want in expected_match_keys(pipeline, records).items():
        assert by_label(s, keys, "key", event=event, pixel=PIXEL) == want, event
    assert total(s, "tiktok_events_assigned_partitions") == 12
    assert total(s, "tiktok_events_commits_total") > 0
    for gauge in ("in_flight_requests", "sink_fatal", "paused"):
        assert total(s, f"tiktok_events_{gauge}") == 0, gauge
    lag = "tiktok_events_consumer_lag"
    wait_for(
        lambda: any(n == lag for n, _ in scrape(port)) and total(scrape(port), lag) == 0,
        30,
        "the lag gauges to show 0",
    )
    check_metrics(promtool, scrape_text(port))
    assert get(pipeline, "/healthz") == (200, "ok")
    assert get(pipeline, "/readyz") == (200, "ok")
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()


def expected_match_keys(pipeline: Pipeline, records: list[SampleRecord]) -> dict[str, Counter[str]]:
    """The match keys the records' events carry, by event and key label."""
    _, transformer, _ = load_pipeline(pipeline.config_path, clock=time.time)
    want: dict[str, Counter[str]] = {}
    for record in records:
        for event in transformer.transform(record.topic, 0, 0, record.value).events:
            want.setdefault(event.event, Counter()).update(key_labels(event.match_keys))
    return want


def test_rate_limited_answers_count_as_rate_limited_retries(
    make_pipeline: MakePipeline, processors: Processors, sandbox: Sandbox
) -> None:
    pipeline = make_pipeline(partitions=1)
    sandbox.set_faults("next=40100*2")
    _, expected = pipeline.sample(150, seed=72)
    processor = processors(pipeline)
    pipeline.wait_delivered(expected)
    s = scrape(pipeline.metrics_port)
    assert total(s, "tiktok_events_retries_total", reason="rate_limited") == 2
    assert total(s, "tiktok_events_retries_total") == 2
    assert total(s, "tiktok_events_requests_total", outcome="retryable", code="40100") == 2
    assert sandbox.stats()["faults"]["codes"].get("40100") == 2
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()


def test_readiness_fails_on_a_token_error_and_recovers_after_rotation(
    make_pipeline: MakePipeline, processors: Processors, sandbox: Sandbox
) -> None:
    pipeline = make_pipeline(partitions=1)
    _, first = pipeline.sample(100, seed=73)
    processor = processors(pipeline)
    pipeline.wait_delivered(first)
    wait_for(lambda: get(pipeline, "/readyz") == (200, "ok"), 30, "ready")
    sandbox.set_tokens(["other"])  # the current token stops working
    _, second = pipeline.sample(100, seed=74)
    wait_for(lambda: get(pipeline, "/readyz")[0] == 503, 30, "readiness to fail")
    _, reason = get(pipeline, "/readyz")
    assert reason.startswith("halted: 40105"), reason
    assert TOKEN not in reason
    assert get(pipeline, "/healthz") == (200, "ok")  # halted is not dead: no restart
    wait_for(lambda: pipeline.metric("tiktok_events_paused") == 1, 30, "consumption paused")
    assert pipeline.metric("tiktok_events_sink_fatal") == 1
    # Records keep arriving while paused: the lag must show them (paused partitions fetch
    # nothing, so their watermark has to be asked of the broker).
    pipeline.sample(300, seed=75)
    wait_for(
        lambda: (pipeline.metric("tiktok_events_consumer_lag") or 0) >= 300, 40, "the lag to grow"
    )
    pipeline.token_file.write_text("other\n")  # rotation: the file is re-read
    wait_for(lambda: get(pipeline, "/readyz") == (200, "ok"), 60, "readiness to come back")
    wait_for(lambda: sum(pipeline.accepted().values()) > sum((first + second).values()), 60, "all")
    assert pipeline.metric("tiktok_events_sink_fatal") == 0
    wait_for(lambda: pipeline.metric("tiktok_events_paused") == 0, 30, "consumption resumed")
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _worker_pids(parent: int) -> list[int]:
    """The worker processes (spawn also starts a resource tracker, which is not one)."""
    pids = []
    for child in _children(parent):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in cmdline:
            pids.append(child)
    return pids


def test_workers_serve_one_endpoint_with_every_workers_numbers(
    make_pipeline: MakePipeline, processors: Processors, promtool: Path
) -> None:
    pipeline = make_pipeline(partitions=4)
    processor = processors(pipeline, "--workers", "2")
    port = pipeline.metrics_port
    wait_for(
        lambda: get(pipeline, "/readyz") == (200, "ok: 2 of 2 workers have partitions"),
        60,
        "both workers to own partitions",
    )
    _, expected = pipeline.sample(800, seed=75)
    pipeline.wait_delivered(expected, timeout=90)
    wait_for(
        lambda: total(scrape(port), "tiktok_events_records_consumed_total") == 800,
        30,
        "both workers' records in the one /metrics",
    )
    s = scrape(port)
    assert by_label(s, "tiktok_events_events_mapped_total", "event") == dict(expected)
    assert by_label(s, "tiktok_events_events_sent_total", "event", outcome="accepted") == dict(
        expected
    )
    assert total(s, "tiktok_events_end_to_end_latency_seconds_count") == sum(expected.values())
    assert total(s, "tiktok_events_assigned_partitions") == 16  # 4 topics x 4, split in two
    assert total(s, "tiktok_events_sink_fatal") == 0
    check_metrics(promtool, scrape_text(port))
    assert get(pipeline, "/healthz") == (200, "ok")
    workers = _worker_pids(processor.process.pid)
    assert len(workers) == 2, processor.log()
    # A worker that dies takes the process down (exit 1) instead of running on half-staffed.
    os.kill(workers[1], signal.SIGKILL)
    assert processor.wait(60) == 1, processor.log()
    log = processor.log_path.read_text(errors="replace")
    assert re.search(r"worker \d exited with status -9: stopping the others", log), log


def test_workers_stop_when_their_parent_is_killed(
    make_pipeline: MakePipeline, processors: Processors
) -> None:
    pipeline = make_pipeline(partitions=2)
    processor = processors(pipeline, "--workers", "2")
    wait_for(lambda: get(pipeline, "/readyz")[0] == 200, 60, "ready")
    workers = _worker_pids(processor.process.pid)
    assert len(workers) == 2
    processor.kill()  # SIGKILL: the parent cannot pass anything on
    wait_for(lambda: not any(map(_running, workers)), 60, "the orphaned workers to stop")
    log = processor.log_path.read_text(errors="replace")
    assert log.count("the parent process is gone: stopping") == 2, log


def test_readiness_fails_while_the_brokers_are_down_and_recovers(
    sandbox: Sandbox, processors: Processors, tmp_path: Path
) -> None:
    with KafkaCluster(tmp_path / "kafka", nodes=1) as cluster:
        topics = TopicFactory(cluster.bootstrap_servers, prefix="brokers-down")
        pipeline = Pipeline(
            bootstrap=cluster.bootstrap_servers,
            topics={k: topics() for k in ("page_view", "button_click", "sign_up", "form_submit")},
            dead_letter_topic=topics(),
            group=unique_name("group"),
            sandbox=sandbox,
            workdir=tmp_path,
        )
        processor = processors(pipeline)
        wait_for(lambda: get(pipeline, "/readyz") == (200, "ok"), 60, "ready")
        cluster.kill(0)
        wait_for(lambda: get(pipeline, "/readyz")[0] == 503, 60, "readiness to fail")
        assert get(pipeline, "/readyz")[1].startswith("Kafka brokers unreachable"), processor.log()
        assert get(pipeline, "/healthz") == (200, "ok")  # the loop still turns
        errors = pipeline.metric("tiktok_events_kafka_errors_total") or 0
        assert errors >= 1
        cluster.restart(0)
        wait_for(
            lambda: get(pipeline, "/readyz") == (200, "ok"),
            120,
            f"readiness to return ({get(pipeline, '/readyz')})",
        )
        _, expected = pipeline.sample(100, seed=76)
        pipeline.wait_delivered(expected)
        processor.terminate()
        assert processor.wait(60) == 0, processor.log()


# -- logs -----------------------------------------------------------------------------------


def _pii(values: list[bytes]) -> set[str]:
    """Raw emails, phones, user ids and IPs of the records."""
    found = set()
    for value in values:
        doc = orjson.loads(value)
        user = doc.get("user") or {}
        for item in (user.get("email"), user.get("phone"), doc.get("user_id")):
            if item:
                found.add(str(item))
        if (doc.get("context") or {}).get("ip"):
            found.add(doc["context"]["ip"])
    return found


def _poison(pipeline: Pipeline, good: bytes) -> list[bytes]:
    """Records rejected with PII in them: a bad email, and a schema break."""
    doc = orjson.loads(good)
    bad_email = {**doc, "user": {"email": "raw.person@@example.org", "phone": "+44 20 7946 0958"}}
    bad_schema = {**doc, "page": {"url": 12}, "user": {"email": "leak.check@example.org"}}
    values = [orjson.dumps(bad_email), orjson.dumps(bad_schema)]
    produce(pipeline.bootstrap, pipeline.topics["sign_up"], [(b"k", v) for v in values])
    return values


def test_text_logs_show_progress_and_never_the_token_or_raw_pii(
    make_pipeline: MakePipeline, processors: Processors
) -> None:
    pipeline = make_pipeline()
    records, expected = pipeline.sample(400, seed=77)
    good = next(r.value for r in records if r.kind == "sign_up")
    poison = _poison(pipeline, good)
    processor = processors(pipeline, "--progress-interval", "1", "--log-level", "DEBUG")
    pipeline.wait_delivered(expected)
    wait_for(lambda: len(PROGRESS.findall(processor.log())) >= 2, 30, "progress lines")
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
    log = processor.log_path.read_text(errors="replace")
    assert "records/s" in log
    assert TOKEN not in log
    leaked = {value for value in _pii([r.value for r in records] + poison) if value in log}
    assert leaked == set()


def test_json_logs_are_one_object_a_line_with_structured_fields(
    make_pipeline: MakePipeline, processors: Processors
) -> None:
    pipeline = make_pipeline(partitions=1)
    records, expected = pipeline.sample(200, seed=78)
    processor = processors(pipeline, "--log-format", "json")
    pipeline.wait_delivered(expected)
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
    entries: list[dict[str, Any]] = []
    for line in processor.log_path.read_text().splitlines():
        if re.match(r"%\d\|", line):
            continue  # librdkafka's own lines of the dead-letter producer (it has no logger)
        entries.append(json.loads(line))
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    (started,) = [e for e in entries if e["message"] == "processor started"]
    assert started["group"] == pipeline.group
    assigned = [e for e in entries if e["message"].startswith("partitions assigned")]
    assert sum(e["count"] for e in assigned) == 4
    assert {t for e in assigned for t in e["topics"]} == set(pipeline.topics.values())
    (stopped,) = [e for e in entries if e["message"].startswith("stopped:")]
    assert (stopped["records"], stopped["events_accepted"]) == (200, sum(expected.values()))
    text = "\n".join(json.dumps(e) for e in entries)
    assert TOKEN not in text
    assert not {value for value in _pii([r.value for r in records]) if value in text}
    assert not any(PROGRESS.search(e["message"]) for e in entries)  # progress is for people
