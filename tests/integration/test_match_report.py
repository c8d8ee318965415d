"""`tiktok-events match-report` on a live topic of the real broker: what the newest
records would give TikTok to match with, read by a consumer that commits nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

from devkit.kafka import committed_offsets
from processor.matchkeys import MatchSummary
from processor.transform import load_pipeline
from tests.conftest import ROOT
from tests.integration.pipeline import MakePipeline


def match_report(config: str, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor", "match-report", "--config", config,
         "--topic", topic, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_match_report_summarises_the_newest_records_and_commits_nothing(
    make_pipeline: MakePipeline,
) -> None:
    pipeline = make_pipeline(partitions=3)
    records, _ = pipeline.sample(800, seed=12)
    topic = pipeline.topics["page_view"]
    on_topic = [r for r in records if r.topic == topic]
    assert len(on_topic) > 150
    config = str(pipeline.config_path)

    done = match_report(config, topic, "--count", "100", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["records"] == 100
    assert report["events"] + report["filtered"] + sum(report["rejected"].values()) == 100
    assert report["events"] > 0
    assert set(report["match_keys"]) == {"ViewContent"}

    # Every record of the topic: the same figures as the transformer gives them.
    done = match_report(config, topic, "--count", "100000", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["records"] == len(on_topic)
    _, transformer, _ = load_pipeline(pipeline.config_path, clock=time.time)
    want = MatchSummary()
    filtered = 0
    for record in on_topic:
        result = transformer.transform(topic, 0, 0, record.value)
        filtered += result.filtered
        for event in result.events:
            want.add(event.event, event.match_keys)
    assert report["filtered"] == filtered
    assert report["match_keys"] == want.as_json()

    text = match_report(config, topic, "--count", "100000")
    assert text.returncode == 0, text.stderr
    assert f"the newest {len(on_topic):,} records" in text.stdout
    first = next(want.lines())
    assert f"  {first}" in text.stdout.splitlines()
    assert "ip+ua" in first

    # The processor's group was never joined and nothing was committed for it.
    assert committed_offsets(pipeline.bootstrap, pipeline.group, topic) == {}


def test_match_report_names_a_topic_that_does_not_exist(make_pipeline: MakePipeline) -> None:
    pipeline = make_pipeline(partitions=1)
    done = match_report(str(pipeline.config_path), "no-such-topic")
    assert done.returncode == 1
    assert "no mapping reads topic 'no-such-topic'" in done.stderr
    # A mapped topic that is empty: a report of nothing, not an error.
    done = match_report(str(pipeline.config_path), pipeline.topics["sign_up"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"] == 0
    assert Counter() == Counter(json.loads(done.stdout)["rejected"])
