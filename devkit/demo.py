"""``make demo``: the main job on a local default, from nothing to delivered events.

1. a Kafka broker: the ``make kafka-up`` one if it runs, else a temporary one;
2. the TikTok sandbox on 127.0.0.1 (the processor's endpoint for the demo);
3. sample clickstream on the four topics of config/example.yaml (plus records
   that must be filtered out);
4. ``tiktok-events run`` as a subprocess, exactly as in production, until the
   sandbox has every event the sample should become;
5. a table of what the sandbox accepted per event against what was expected,
   where the metrics are, and the match keys of the accepted events (from the
   metrics); then everything it started is stopped.

Exit status 0 when the accepted counts equal the expected ones.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devkit.kafka import KafkaCluster, fetch, free_port, running_bootstrap, unique_name
from processor.kafka.producer import ensure_topics, produce_sample
from processor.matchkeys import MatchSummary
from processor.sample import generate
from processor.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "example.yaml"
TOKEN = "demo-token"  # noqa: S105 - the local sandbox's throwaway token
DEAD_LETTERS = "clickstream.dlq"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def demo_config(workdir: Path, bootstrap: str, endpoint: str, metrics_port: int) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["kafka"].update(bootstrap_servers=bootstrap, group_id=unique_name("demo"))
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    raw["tiktok"] = {
        "pixel_code": raw["tiktok"]["pixel_code"],
        "endpoint": endpoint,
        "access_token_file": str(token_file),
    }
    raw["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def scrape(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Sums of some metrics from the processor's /metrics."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith((name + " ", name + "{")):
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


def start_broker(stack: ExitStack, workdir: Path) -> str:
    """The ``make kafka-up`` broker when it runs, else a temporary one (stopped at exit)."""
    bootstrap = running_bootstrap()
    if bootstrap:
        say(f"using the running broker at {bootstrap} (make kafka-up)")
        return bootstrap
    libs = fetch()
    say(f"starting Apache Kafka {libs.version} (KRaft) on 127.0.0.1 …")
    cluster = stack.enter_context(KafkaCluster(workdir / "kafka", nodes=1))
    say(f"broker up at {cluster.bootstrap_servers}")
    return cluster.bootstrap_servers


def produce(bootstrap: str, count: int) -> Counter[str]:
    """Sample records onto the example topics; returns the events they should become."""
    records, expected = generate(count, seed=2026, start=time.time() - 120)
    topics = sorted({r.topic for r in records})
    ensure_topics(bootstrap, [*topics, DEAD_LETTERS], partitions=3)
    began = time.monotonic()
    produce_sample(bootstrap, records)
    filtered = len(records) - sum(expected.values())
    say(
        f"produced {len(records)} sample records to {', '.join(topics)} in "
        f"{time.monotonic() - began:.1f}s ({filtered} should be filtered out)"
    )
    return expected


def start_processor(stack: ExitStack, config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "processor", "run", "--config", str(config),
             "--log-format", "text"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def kill_if_running() -> None:
        if process.poll() is None:
            process.kill()

    stack.callback(kill_if_running)
    say(f"processor started: tiktok-events run --config {config}")
    return process


def wait_for_delivery(
    sandbox: Sandbox, process: subprocess.Popen[bytes], expected: Counter[str], timeout: float
) -> Counter[str]:
    total = sum(expected.values())
    deadline = time.monotonic() + timeout
    accepted: Counter[str] = Counter()
    last_report = 0.0
    while time.monotonic() < deadline and process.poll() is None:
        accepted = Counter(sandbox.stats()["events"]["by_event"])
        if accepted == expected:
            break
        if time.monotonic() - last_report >= 2:
            say(f"delivered {sum(accepted.values())}/{total} events …")
            last_report = time.monotonic()
        time.sleep(0.2)
    return accepted


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return -1


def match_keys(port: int) -> MatchSummary:
    """The match keys of the accepted events, from the processor's /metrics."""
    summary = MatchSummary()
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return summary
    accepted: Counter[str] = Counter()
    keys: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "tiktok_events_events_sent_total" and labels["outcome"] == "accepted":
                accepted[labels["event"]] += int(sample.value)
            elif sample.name == "tiktok_events_match_keys_total":
                keys.setdefault(labels["event"], Counter())[labels["key"]] += int(sample.value)
    for event, count in accepted.items():
        summary.add_counts(event, count, keys.get(event, Counter()))
    return summary


def report(
    expected: Counter[str],
    accepted: Counter[str],
    figures: dict[str, float],
    keys: MatchSummary,
    took: float,
) -> None:
    total = sum(expected.values())
    print()
    print(f"{'TikTok event':<22}{'expected':>10}{'accepted':>10}")
    for event in sorted(set(expected) | set(accepted)):
        mark = "" if expected[event] == accepted[event] else "   <-- differs"
        print(f"{event:<22}{expected[event]:>10}{accepted[event]:>10}{mark}")
    print(f"{'total':<22}{total:>10}{sum(accepted.values()):>10}")
    print()

    def figure(name: str) -> str:
        return f"{figures.get(f'tiktok_events_{name}', 0):.0f}"

    print(
        f"records consumed {figure('records_consumed_total')}, "
        f"filtered {figure('records_filtered_total')}, "
        f"dead-lettered {figure('records_dead_lettered_total')}; "
        f"{figure('requests_total')} requests, {figure('retries_total')} retries; "
        f"delivered in {took:.1f}s"
    )
    print("match keys of the accepted events (tiktok_events_match_keys_total):")
    for line in keys.lines():
        print(f"  {line}")


METRICS_SHOWN = tuple(
    f"tiktok_events_{name}"
    for name in (
        "records_consumed_total",
        "records_filtered_total",
        "records_dead_lettered_total",
        "requests_total",
        "retries_total",
    )
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000, help="sample records (default 5000)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for delivery")
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tiktok-demo-")))
        bootstrap = start_broker(stack, workdir)
        sandbox = stack.enter_context(Sandbox(tokens=(TOKEN,)))
        say(f"TikTok sandbox at {sandbox.endpoint}; Test Events page: {sandbox.url}/")
        expected = produce(bootstrap, args.records)
        metrics_port = free_port()
        config = demo_config(workdir, bootstrap, sandbox.endpoint, metrics_port)
        log_path = workdir / "processor.log"
        process = start_processor(stack, config, log_path)
        say(f"metrics: http://127.0.0.1:{metrics_port}/metrics  (/healthz, /readyz)")
        started = time.monotonic()
        accepted = wait_for_delivery(sandbox, process, expected, args.timeout)
        took = time.monotonic() - started
        figures = scrape(metrics_port, METRICS_SHOWN)
        keys = match_keys(metrics_port)
        status = stop(process)
        report(expected, accepted, figures, keys, took)
        print(f"processor stopped with status {status}")
        if accepted != expected or status != 0:
            print(log_path.read_text(errors="replace")[-3000:])
            say("FAILED: the accepted events differ from the sample's expected events")
            return 1
        say("OK: every expected event was accepted exactly once; cleaning up")
        return 0


if __name__ == "__main__":
    sys.exit(main())
