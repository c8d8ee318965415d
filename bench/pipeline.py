"""Benchmark: the whole job, Kafka → tiktok-events run → the TikTok sandbox.

Produces N sample records (the four seed kinds plus records that are filtered)
to a real broker, then runs ``tiktok-events run`` (one worker, a subprocess, as
in production) against the sandbox with the request rate limit lifted, and
times it from the first accepted event to the last. In the same run and on the
same broker it measures a plain confluent-kafka consumer reading the same
records and parsing them with orjson (no other processing) as the baseline, and
prints both rates, their ratio, and the CPU each spends per record as the OS
accounts it (the stable figure on a small, noisy machine).

    python bench/pipeline.py [--records 50000] [--workers 1] [--json]

Uses the ``make kafka-up`` broker when it runs, else starts a temporary one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import orjson
import yaml
from confluent_kafka import Consumer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.kafka import KafkaCluster, free_port, running_bootstrap, unique_name  # noqa: E402
from processor.kafka.producer import ensure_topics, produce_sample  # noqa: E402
from processor.sample import generate  # noqa: E402
from processor.sandbox import Sandbox  # noqa: E402

TOKEN = "bench-token"  # noqa: S105 - the benchmark sandbox's throwaway token


def consume_only(bootstrap: str, topics: list[str], count: int) -> tuple[float, float]:
    """(records/s, CPU µs per record) of a consumer that only reads and parses (the baseline).

    The CPU is this process's (librdkafka's threads included) while it reads; the sandbox
    in this process is idle then.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("bench-baseline"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    seen = 0
    started = None
    cpu_started = time.process_time()
    deadline = time.monotonic() + 120
    while seen < count and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=1000, timeout=0.5)
        if batch and started is None:
            started = time.monotonic()
        for message in batch:
            if message.error() is None:
                orjson.loads(message.value())
                seen += 1
    took = time.monotonic() - (started or time.monotonic())
    cpu = time.process_time() - cpu_started
    consumer.close()
    return (seen / took if took > 0 else 0.0), cpu * 1e6 / max(seen, 1)


def write_config(workdir: Path, bootstrap: str, endpoint: str) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    raw["kafka"].update(bootstrap_servers=bootstrap, group_id=unique_name("bench"))
    (workdir / "token").write_text(TOKEN)
    raw["tiktok"] = {
        "pixel_code": raw["tiktok"]["pixel_code"],
        "endpoint": endpoint,
        "access_token_file": str(workdir / "token"),
    }
    raw["delivery"] = {"max_requests_per_s": 10_000, "max_buffered_events": 50_000}
    raw["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def point_at_topics(config: Path, topics: dict[str, str]) -> None:
    raw = yaml.safe_load(config.read_text())
    kinds = ("page_view", "sign_up", "button_click", "form_submit")  # the example's mapping order
    for mapping, kind in zip(raw["mappings"], kinds, strict=True):
        mapping["topic"] = topics[kind]
    config.write_text(yaml.safe_dump(raw, sort_keys=False))


def run_processor(
    stack: ExitStack, config: Path, workers: int, sandbox: Sandbox, total: int
) -> tuple[float, float, float, float] | None:
    """(launched, first accepted, all accepted, CPU seconds), or None if not delivered.

    The CPU is the OS's account of the processor's whole process tree (user + sys of the
    process and the workers it waited for), from ``os.wait4``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
    prefix = os.environ.get("BENCH_PYTHON_PREFIX", "").split()  # e.g. "-m cProfile -o out"
    launched = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, *prefix, "-m", "processor", "run", "--config", str(config),
         "--workers", str(workers), "--log-format", "text"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stack.callback(process.kill)
    first = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        accepted = sandbox.stats()["events"]["accepted"]
        if accepted and first is None:
            first = time.monotonic()
        if accepted >= total:
            break
        time.sleep(0.05)
    done = time.monotonic()
    process.terminate()
    cpu = wait_cpu(process, 60)
    if first is None or sandbox.stats()["events"]["accepted"] != total:
        return None
    return launched, first, done, cpu


def wait_cpu(process: subprocess.Popen[bytes], timeout: float) -> float:
    """Reap ``process`` and return the user + sys seconds of it and its reaped children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, _status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = 0
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.05)
    process.kill()
    _pid, _status, usage = os.wait4(process.pid, 0)
    process.returncode = -9
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        bootstrap = running_bootstrap()
        if not bootstrap:
            cluster = stack.enter_context(KafkaCluster(workdir / "kafka", nodes=1))
            bootstrap = cluster.bootstrap_servers
        sandbox = stack.enter_context(Sandbox(tokens=(TOKEN,), max_stored_events=1000))
        suffix = unique_name("b")
        kinds = ("page_view", "button_click", "sign_up", "form_submit")
        topics = {kind: f"bench.{kind}.{suffix}" for kind in kinds}
        records, expected = generate(args.records, seed=9, start=time.time() - 300, topics=topics)
        ensure_topics(bootstrap, list(topics.values()), partitions=4)
        produce_sample(bootstrap, records)
        total = sum(expected.values())
        baseline, baseline_cpu = consume_only(bootstrap, list(topics.values()), args.records)
        config = write_config(workdir, bootstrap, sandbox.endpoint)
        point_at_topics(config, topics)
        times = run_processor(stack, config, args.workers, sandbox, total)
        if times is None:
            print("the processor did not deliver every event")
            return 1
        launched, first, done, cpu = times
        cpu_per_record = cpu * 1e6 / args.records
        rate = args.records / (done - first)
        ratio = rate / baseline if baseline else 0.0
        events_rate = rate * total / args.records
        print(f"records: {args.records:,} on 4 topics x 4 partitions; {total:,} events delivered")
        print(f"start-up to first accepted event: {first - launched:.1f}s")
        workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
        print(f"pipeline ({workers}): {rate:12,.0f} records/s ({events_rate:,.0f} events/s)")
        print(f"consume-only baseline: {baseline:12,.0f} records/s")
        print(f"ratio pipeline/consume-only: {ratio:.3f}")
        print(
            f"CPU per record: pipeline {cpu_per_record:.1f} µs (whole run, start-up included), "
            f"consume+parse {baseline_cpu:.1f} µs"
        )
        if args.json:
            summary = {"records_per_s": round(rate), "baseline_per_s": round(baseline)}
            summary |= {"ratio": round(ratio, 4), "workers": args.workers}
            summary |= {"cpu_us_per_record": round(cpu_per_record, 1)}
            summary |= {"baseline_cpu_us_per_record": round(baseline_cpu, 1)}
            print(orjson.dumps(summary).decode())
        return 0


if __name__ == "__main__":
    sys.exit(main())
