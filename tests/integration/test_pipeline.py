"""The main job end to end: a real Kafka broker, the sandbox over HTTP, and
``tiktok-events run`` as a subprocess. One test per delivery guarantee
(docs/ARCHITECTURE.md, "The delivery contract"); each fails if its invariant breaks.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from devkit.kafka import consume_all, produce
from processor.sandbox import Sandbox
from tests.conftest import ROOT
from tests.integration.pipeline import (
    TOKEN,
    MakePipeline,
    ProcessorProcess,
    all_committed,
    dead_letters,
    wait_for,
)


def test_sample_clickstream_is_delivered_and_committed(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    pipeline = make_pipeline()
    _, expected = pipeline.sample(2000)
    processor = processors(pipeline)
    pipeline.wait_delivered(expected)
    wait_for(lambda: all_committed(pipeline), 30, "every offset committed")
    assert pipeline.sandbox.stats()["events"]["duplicates"] == 0
    assert pipeline.metric("tiktok_events_records_consumed_total") is not None
    assert pipeline.health("/readyz") == 200
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
    assert dead_letters(pipeline) == []


def test_out_of_order_completion_commits_only_the_watermark(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    # One partition a topic, one event a request, several in flight. The first request
    # is answered 429 with Retry-After: 4, so it completes long after those behind it.
    pipeline = make_pipeline(
        partitions=1,
        derived_ids=True,
        delivery={"max_batch_events": 1, "max_in_flight": 4, "backoff_max_ms": 10_000},
    )
    sandbox.set_faults("next=http429,retry_after=4")
    records, expected = pipeline.sample(40, seed=5)
    offsets: Counter[str] = Counter()
    event_ids = {}
    for record in records:  # derived ids: <topic>-<partition>-<offset>
        if record.expected_event:
            event_ids[f"{record.topic}-0-{offsets[record.topic]}"] = (
                record.topic,
                offsets[record.topic],
            )
        offsets[record.topic] += 1
    processor = processors(pipeline)
    total = sum(expected.values())
    wait_for(lambda: sum(pipeline.accepted().values()) == total - 1, 30, "all but the held event")
    delivered = {e["event"]["event_id"] for e in sandbox.events(limit=1000)}
    ((held_topic, held_offset),) = [where for i, where in event_ids.items() if i not in delivered]
    time.sleep(1.0)  # several commit intervals pass while the held event waits
    kinds = {topic: kind for kind, topic in pipeline.topics.items()}
    assert pipeline.committed(kinds[held_topic]).get(0, 0) == held_offset
    for topic, kind in kinds.items():
        if topic != held_topic:
            assert pipeline.committed(kind).get(0, 0) == offsets[topic]
    pipeline.wait_delivered(expected, timeout=30)
    wait_for(lambda: all_committed(pipeline), 30, "the watermark to reach the end")
    processor.terminate()
    assert processor.wait(30) == 0


def test_kill_9_mid_stream_loses_nothing_and_replays_keep_their_event_ids(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    # Commits are rare (every 3 s) so the crash leaves delivered-but-uncommitted records.
    pipeline = make_pipeline(
        delivery={"commit_interval_ms": 3000, "max_batch_events": 10, "max_in_flight": 2}
    )
    sandbox.set_faults("latency=50ms")
    _, expected = pipeline.sample(3000, seed=7)
    total = sum(expected.values())
    first = processors(pipeline)
    wait_for(lambda: sum(pipeline.accepted().values()) >= total // 3, 60, "a third delivered")
    first.kill()
    assert sum(pipeline.accepted().values()) < total, "killed too late to prove anything"
    sandbox.set_faults(None)
    second = processors(pipeline)
    pipeline.wait_delivered(expected, timeout=90)
    stats = sandbox.stats()["events"]
    # Re-sent events carried the same event ids: TikTok (the sandbox) kept one of each.
    assert stats["duplicates"] > 0
    assert stats["accepted"] == total
    wait_for(lambda: all_committed(pipeline), 30, "every offset committed")
    second.terminate()
    assert second.wait(30) == 0


def test_timeouts_resets_429_5xx_and_rate_limits_lose_nothing_and_dead_letter_nothing(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    pipeline = make_pipeline(
        delivery={"max_batch_events": 20, "request_timeout_s": 0.5, "max_retries": 30}
    )
    sandbox.set_faults(
        "code=40100:0.1,code=50000:0.05,http=503:0.1,http=429:0.05,http=500:0.05,drop=0.05,"
        "jitter=700ms,retry_after=0,seed=11"
    )
    _, expected = pipeline.sample(1500, seed=11)
    processor = processors(pipeline)
    pipeline.wait_delivered(expected, timeout=120)
    wait_for(lambda: all_committed(pipeline), 30, "every offset committed")
    faults = sandbox.stats()["faults"]
    assert faults["dropped"] > 0
    assert faults["http"].get("503", 0) > 0
    assert faults["codes"].get("40100", 0) > 0
    assert (pipeline.metric("tiktok_events_retries_total") or 0) > 0 or "retr" in processor.log()
    processor.terminate()
    assert processor.wait(30) == 0
    assert dead_letters(pipeline) == []


def test_a_bad_event_in_a_batch_is_dead_lettered_alone_with_tiktoks_message(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    pipeline = make_pipeline(delivery={"max_batch_events": 200, "linger_ms": 500})
    records, expected = pipeline.sample(600, seed=3)
    bad = [r for r in records if r.expected_event][10:13]
    bad_ids = [orjson.loads(r.value)["event_id"] for r in bad]
    sandbox.set_faults(",".join(f"reject={i}" for i in bad_ids))
    processor = processors(pipeline)
    delivered = expected - Counter(r.expected_event for r in bad)
    pipeline.wait_delivered(delivered, timeout=60)
    wait_for(lambda: len(dead_letters(pipeline)) == 3, 30, "three dead letters")
    letters = dead_letters(pipeline)
    assert sorted(letter["value"] for letter in letters) == sorted(r.value for r in bad)
    for letter in letters:
        assert letter["dlq.stage"] == "api"
        assert "40002" in letter["dlq.reason"]
        assert "refused by the sandbox" in letter["dlq.reason"]
        assert letter["dlq.mapping"]
        assert TOKEN not in json.dumps({k: str(v) for k, v in letter.items()})
    wait_for(lambda: all_committed(pipeline), 30, "every offset committed")
    # Replay: once TikTok takes them, the dead letters are delivered under their ids.
    sandbox.set_faults(None)
    processor.terminate()
    assert processor.wait(30) == 0
    # One of them dead-lettered twice (as a crash between writing it and committing does):
    # the replay sends each source record once.
    (first, *_) = consume_all(pipeline.bootstrap, pipeline.dead_letter_topic)
    produce(
        pipeline.bootstrap,
        pipeline.dead_letter_topic,
        [(first.key, first.value, list(first.headers))],
    )
    replay = subprocess.run(
        [sys.executable, "-m", "processor", "replay-dlq", "--config", str(pipeline.config_path),
         "--json", "--log-format", "text"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    report = json.loads(replay.stdout.strip().splitlines()[-1])
    assert report == {
        "dead_letters": 4,
        "filtered": 0,
        "events_delivered": 3,
        "still_rejected": {},
        "duplicates_skipped": 1,
    }
    assert pipeline.accepted() == expected


def test_a_bad_token_commits_nothing_and_delivery_resumes_after_the_token_file_is_fixed(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    pipeline = make_pipeline(partitions=1)
    _, first = pipeline.sample(200, seed=21)
    processor = processors(pipeline)
    pipeline.wait_delivered(first)
    wait_for(lambda: all_committed(pipeline), 30, "the first part committed")
    before = {kind: pipeline.committed(kind) for kind in pipeline.topics}
    sandbox.set_tokens(["tok-rotated"])  # the current token stops working: 40105
    _, second = pipeline.sample(200, seed=22)
    wait_for(lambda: pipeline.health("/readyz") == 503, 30, "readiness to flip")
    assert pipeline.metric("tiktok_events_sink_fatal") == 1
    time.sleep(1.5)
    assert {kind: pipeline.committed(kind) for kind in pipeline.topics} == before
    assert pipeline.accepted() == first
    assert dead_letters(pipeline) == []  # a bad token never dead-letters
    pipeline.token_file.write_text("tok-rotated\n")
    pipeline.wait_delivered(first + second, timeout=60)
    wait_for(lambda: all_committed(pipeline), 30, "everything committed")
    wait_for(lambda: pipeline.health("/readyz") == 200, 30, "readiness to come back")
    assert "tok-rotated" not in processor.log()
    assert TOKEN not in processor.log()
    processor.terminate()
    assert processor.wait(30) == 0


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_two_consumers_rebalancing_lose_nothing(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], protocol: str
) -> None:
    pipeline = make_pipeline(partitions=4, group_protocol=protocol)
    pipeline.sandbox.set_faults("latency=20ms")
    _, expected = pipeline.sample(1500, seed=31)
    first = processors(pipeline)
    total = sum(expected.values())
    wait_for(lambda: sum(pipeline.accepted().values()) >= total // 4, 60, "a quarter delivered")
    second = processors(pipeline)
    _, more = pipeline.sample(1500, seed=32)
    expected += more
    total = sum(expected.values())
    wait_for(lambda: sum(pipeline.accepted().values()) >= total // 2, 60, "half delivered")
    first.terminate()  # its partitions move to the second member
    assert first.wait(60) == 0, first.log()
    pipeline.sandbox.set_faults(None)
    pipeline.wait_delivered(expected, timeout=90)
    wait_for(lambda: all_committed(pipeline), 30, "every offset committed")
    assert "partitions assigned" in second.log()
    second.terminate()
    assert second.wait(30) == 0
    assert dead_letters(pipeline) == []


def test_sigterm_drains_and_commits(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    # Commits only at the end (an interval far longer than the test): what is committed
    # after the stop was committed by the drain.
    pipeline = make_pipeline(delivery={"commit_interval_ms": 600_000, "linger_ms": 2000})
    _, expected = pipeline.sample(800, seed=41)
    processor = processors(pipeline)
    wait_for(
        lambda: pipeline.metric("tiktok_events_records_consumed_total") == 800, 60, "all consumed"
    )
    processor.terminate()  # batches are still lingering: the stop must flush and wait
    assert processor.wait(60) == 0, processor.log()
    assert pipeline.accepted() == expected
    assert all_committed(pipeline)


def test_undecodable_and_schema_invalid_records_are_dead_lettered_while_the_partition_flows(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    pipeline = make_pipeline(partitions=1)
    records, _ = pipeline.sample(50, seed=51)
    good = [r for r in records if r.kind == "page_view"][:3]
    topic = pipeline.topics["page_view"]
    invalid_schema = orjson.loads(good[0].value) | {"page": {"url": 12}}
    feed = [
        (b"k0", good[0].value),
        (b"k1", b"\x00not json at all"),
        (b"k2", good[1].value),
        (b"k3", orjson.dumps(invalid_schema)),
        (b"k4", good[2].value, [("trace", b"t-1")]),
    ]
    offsets = produce(pipeline.bootstrap, topic, feed)
    processor = processors(pipeline)
    wait_for(lambda: len(dead_letters(pipeline)) == 2, 60, "two dead letters")
    wait_for(lambda: all_committed(pipeline), 60, "the partition committed to its end")
    letters = sorted(dead_letters(pipeline), key=lambda letter: int(letter["dlq.source.offset"]))
    first_offset = offsets[0][1]
    assert [letter["dlq.source.offset"] for letter in letters] == [
        str(first_offset + 1),
        str(first_offset + 3),
    ]
    assert [letter["dlq.stage"] for letter in letters] == ["decode", "input-schema"]
    assert letters[0]["value"] == b"\x00not json at all"
    assert letters[0]["key"] == b"k1"
    assert letters[1]["dlq.reason"].startswith("page.url:")
    assert all(
        letter["dlq.source.topic"] == topic and letter["dlq.source.partition"] == "0"
        for letter in letters
    )
    processor.terminate()
    assert processor.wait(30) == 0


def test_the_dead_letter_limit_stops_the_processor(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    pipeline = make_pipeline(partitions=1, dead_letter={"max_consecutive": 20, "max_ratio": 1.0})
    produce(pipeline.bootstrap, pipeline.topics["page_view"], [(b"k", b"junk")] * 60)
    processor = processors(pipeline)
    status = processor.wait(60)
    assert status == 1
    assert "dead-letter limit reached: 20 records in a row were dead-lettered" in processor.log()
    committed = pipeline.committed("page_view").get(0, 0)
    assert committed <= len(dead_letters(pipeline))  # never past a record not yet dead-lettered


def test_tiktok_refusing_every_event_trips_the_dead_letter_limit_and_stops(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    # A TikTok-side fault (every event answered 40002) must stop the processor as surely
    # as records that never map, not dead-letter the whole stream.
    limit = 20
    pipeline = make_pipeline(partitions=1, dead_letter={"max_consecutive": limit, "max_ratio": 1.0})
    sandbox.set_faults("reject=-")  # every sample event id (a UUID) holds a "-"
    records, expected = pipeline.sample(400, seed=67)
    processor = processors(pipeline)
    assert processor.wait(90) == 1, processor.log()
    log = processor.log()
    assert f"dead-letter limit reached: {limit} records in a row were dead-lettered" in log
    assert "(last: api: 40002" in log
    assert pipeline.accepted() == Counter()
    # Nothing committed past a record that maps to an event and was not dead-lettered.
    lettered = {
        (letter["dlq.source.topic"], int(letter["dlq.source.offset"]))
        for letter in dead_letters(pipeline)
        if letter["dlq.stage"] == "api"
    }
    assert lettered
    for kind, topic in pipeline.topics.items():
        mine = [r for r in records if r.topic == topic]  # offsets in produce order: 1 partition
        committed = pipeline.committed(kind).get(0, 0)
        for offset, record in enumerate(mine[:committed]):
            if record.expected_event is not None:
                assert (topic, offset) in lettered, f"{topic}@{offset} committed, not dead-lettered"
    # It stopped at the limit: what TikTok refused after that is left for the restart.
    assert len(lettered) == limit
    assert sum(expected.values()) > limit


def test_workers_share_the_group(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    pipeline = make_pipeline(partitions=4)
    _, expected = pipeline.sample(1000, seed=61)
    processor = processors(pipeline, "--workers", "2")
    pipeline.wait_delivered(expected, timeout=90)
    wait_for(lambda: all_committed(pipeline), 30, "every offset committed")
    processor.signal(signal.SIGTERM)
    assert processor.wait(60) == 0, processor.log()
    # Two members each consumed a share: each logs its own count at the stop.
    counts = re.findall(r"stopped: (\d+) records", processor.log())
    assert len(counts) == 2, processor.log()
    assert sum(int(c) for c in counts) >= 1000


def test_a_stop_during_a_total_outage_takes_no_longer_than_the_drain_timeout(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    drain = 12.0  # the old double drain (2 x 12 s + 1) would not fit under drain + 10
    pipeline = make_pipeline(delivery={"drain_timeout_s": drain, "linger_ms": 20})
    _, expected = pipeline.sample(600, seed=61)
    sandbox.set_faults("http=503:1")  # every request answered 503: nothing can finish
    processor = processors(pipeline)
    wait_for(lambda: (pipeline.metric("tiktok_events_retries_total") or 0) > 10, 60, "retries")
    began = time.monotonic()
    processor.terminate()
    assert processor.wait(drain + 30) == 0, processor.log()
    took = time.monotonic() - began
    print(f"stop with every request failing: {took:.1f}s (drain_timeout_s {drain:.0f})")
    assert took < drain + 10, processor.log()
    # Nothing was committed past what TikTok never accepted: a restart delivers it all.
    sandbox.set_faults(None)
    processors(pipeline)
    pipeline.wait_delivered(expected)
