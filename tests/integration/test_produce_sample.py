"""`tiktok-events produce-sample` against the real broker."""

from __future__ import annotations

import json
import subprocess
import sys

from devkit.kafka import TopicFactory, consume_all, unique_name
from tests.conftest import ROOT


def test_produce_sample_creates_topics_produces_and_reports_expected_events(
    kafka_bootstrap: str, new_topic: TopicFactory
) -> None:
    existing = new_topic(partitions=2)  # used as is
    missing = [unique_name("sample") for _ in range(3)]  # created by the command
    topics = [existing, *missing]
    done = subprocess.run(
        [sys.executable, "-m", "processor", "produce-sample", "--bootstrap", kafka_bootstrap,
         "--topics", ",".join(topics), "--count", "300", "--seed", "4", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["produced"] == 300
    assert sorted(summary["topics"]) == sorted(topics)
    expected = summary["expected_events"]
    assert set(expected) == {"ViewContent", "ClickButton", "CompleteRegistration", "Lead"}
    assert sum(expected.values()) + summary["filtered"] == 300
    counts = {t: len(consume_all(kafka_bootstrap, t)) for t in topics}
    assert sum(counts.values()) == 300
    assert all(counts.values())


def test_produce_sample_rejects_a_wrong_topic_list() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "processor", "produce-sample", "--bootstrap", "127.0.0.1:1",
         "--topics", "only,two"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "give 4 topics" in done.stderr
