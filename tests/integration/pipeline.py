"""Helpers for end-to-end tests: a configuration pointing at the test broker and the
sandbox, the processor as a subprocess (``python -m processor run``, as users run
it), sample traffic, and waiting for outcomes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from devkit.kafka import committed_offsets, consume_all, free_port
from processor.dlq import header_map
from processor.kafka.producer import produce_sample
from processor.sample import SampleRecord, generate
from processor.sandbox import Sandbox
from tests.conftest import EXAMPLE_CONFIG, ROOT

#: Mapping index in config/example.yaml → record kind.
MAPPING_KINDS = ("page_view", "sign_up", "button_click", "form_submit")
TOKEN = "tok-pipeline-test"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail the test saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Pipeline:
    """A configuration for one test: its topics, group, sandbox and token file."""

    bootstrap: str
    topics: dict[str, str]
    dead_letter_topic: str
    group: str
    sandbox: Sandbox
    workdir: Path
    delivery: dict[str, Any] = field(default_factory=dict)
    dead_letter: dict[str, Any] = field(default_factory=dict)
    kafka: dict[str, Any] = field(default_factory=dict)
    group_protocol: str = "classic"
    derived_ids: bool = False
    metrics_port: int = field(default_factory=free_port)
    #: More ``tiktok`` settings (``pixels``: tenants with tokens of their own).
    tiktok: dict[str, Any] = field(default_factory=dict)
    #: Record kind → the event source id (pixel code) its mapping sends to.
    event_source_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token_file = self.workdir / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.config_path = self.workdir / "config.yaml"
        self.write_config()

    def write_config(self) -> None:
        raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        raw["kafka"].update(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            dead_letter_topic=self.dead_letter_topic,
            group_protocol=self.group_protocol,
            **self.kafka,
        )
        raw["tiktok"] = {
            "pixel_code": raw["tiktok"]["pixel_code"],
            "endpoint": self.sandbox.endpoint,
            "access_token_file": str(self.token_file),
            **self.tiktok,
        }
        raw["delivery"] = {
            "linger_ms": 50,
            "commit_interval_ms": 200,
            "drain_timeout_s": 10,
            "request_timeout_s": 2,
            "backoff_initial_ms": 20,
            "backoff_max_ms": 500,
            "max_requests_per_s": 2000,
            **self.delivery,
        }
        if self.dead_letter:
            raw["dead_letter"] = self.dead_letter
        raw["metrics"] = {"host": "127.0.0.1", "port": self.metrics_port}
        for mapping, kind in zip(raw["mappings"], MAPPING_KINDS, strict=True):
            mapping["topic"] = self.topics[kind]
            if kind in self.event_source_ids:
                mapping["event_source_id"] = self.event_source_ids[kind]
            if self.derived_ids:
                mapping.pop("event_id", None)
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))

    def sample(
        self, count: int, seed: int = 1, rate: float = 0.0
    ) -> tuple[list[SampleRecord], Counter[str]]:
        """Produce ``count`` sample records (a minute old); returns them and the expected events."""
        records, expected = generate(count, seed=seed, start=time.time() - 60, topics=self.topics)
        produce_sample(self.bootstrap, records, rate=rate)
        return records, expected

    def accepted(self) -> Counter[str]:
        """Unique events the sandbox accepted, by event name."""
        return Counter(self.sandbox.stats()["events"]["by_event"])

    def accepted_by_pixel(self) -> Counter[str]:
        """Unique events the sandbox accepted, by pixel code."""
        return Counter(self.sandbox.stats()["events"]["by_pixel"])

    def wait_delivered(self, expected: Counter[str], timeout: float = 60) -> None:
        wait_for(lambda: self.accepted() == expected, timeout, f"delivery of {dict(expected)}")

    def committed(self, kind: str) -> dict[int, int]:
        return committed_offsets(self.bootstrap, self.group, self.topics[kind])

    def metric(self, name: str) -> float | None:
        """A metric from the processor's /metrics, summed over its labels (None when
        absent or not serving)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((name + " ", name + "{"))
        ]
        return sum(values) if values else None

    def health(self, path: str) -> int | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def health_reason(self, path: str) -> str | None:
        """The body of a health endpoint's answer (its reason), or None when not serving."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2).text
        except httpx.HTTPError:
            return None

    def sample_value(self, series: str) -> float | None:
        """One series of /metrics, written as exposed (``name{label="value"}``)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


class ProcessorProcess:
    """``tiktok-events run`` in a subprocess, its log in a file."""

    def __init__(
        self,
        config: Path,
        log: Path,
        *args: str,
        metrics_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        overrides = env or {}  # the only KAFKA_*/TIKTOK_* variables the processor gets
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
        env.update(overrides)
        if metrics_port is not None:
            env["METRICS_PORT"] = str(metrics_port)
        self.log_path = log
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "processor", "run", "--config", str(config),
             "--log-format", "text", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"processor still running after {timeout}s:\n{self.log()}"
            ) from None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


MakePipeline = Callable[..., Pipeline]


def end_offsets(pipeline: Pipeline, kind: str) -> dict[int, int]:
    """{partition: end offset} of a topic, read back from the topic itself."""
    ends: dict[int, int] = {}
    for record in consume_all(pipeline.bootstrap, pipeline.topics[kind]):
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


def all_committed(pipeline: Pipeline) -> bool:
    return all(
        all(
            pipeline.committed(kind).get(p, 0) >= end
            for p, end in end_offsets(pipeline, kind).items()
        )
        for kind in pipeline.topics
    )


def dead_letters(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [
        {"value": r.value, "key": r.key, **header_map(r.headers)}
        for r in consume_all(pipeline.bootstrap, pipeline.dead_letter_topic)
    ]
