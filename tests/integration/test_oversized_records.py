"""One huge record never crashes the processor nor holds its partition: on a real broker,
records just below, at and above the limits are dead-lettered (truncated to fit, with the
size and SHA-256 of the whole in headers), the partition commits past them, and the
processor keeps running and delivering."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from devkit.kafka import produce
from tests.integration.pipeline import (
    MakePipeline,
    ProcessorProcess,
    all_committed,
    dead_letters,
    wait_for,
)

#: Lets the test put records larger than the broker's default limit on the source topic.
BIG_TOPIC = {"max.message.bytes": "3000000"}
PRODUCER = {"message.max.bytes": 3_000_000}


def junk(size: int, seed: int) -> bytes:
    """``size`` bytes that are not JSON, different for each seed."""
    block = hashlib.sha256(str(seed).encode()).digest() * 32  # 1 KiB
    return (b"\x00" + block * (size // len(block) + 1))[:size]


def test_records_around_the_size_limits_are_dead_lettered_and_the_partition_moves_on(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    pipeline = make_pipeline(partitions=1, topic_config=BIG_TOPIC)
    topic = pipeline.topics["page_view"]
    # Just below, at and above both the dead-letter limit and max_record_bytes (1,000,000).
    sizes = [999_000, 1_000_000, 1_000_001, 1_100_000, 2_500_000]
    bad = {size: junk(size, size) for size in sizes}
    produce(
        pipeline.bootstrap,
        topic,
        [(f"k{size}".encode(), value) for size, value in bad.items()],
        config=PRODUCER,
    )
    _, expected = pipeline.sample(200, seed=7)
    processor = processors(pipeline)
    pipeline.wait_delivered(expected)
    wait_for(lambda: len(dead_letters(pipeline)) == len(sizes), 60, "every dead letter")
    wait_for(lambda: all_committed(pipeline), 60, "every partition committed to its end")

    letters = {int(d["dlq.value.bytes"]) if "dlq.value.bytes" in d else len(d["value"]): d
               for d in dead_letters(pipeline)}  # fmt: skip
    assert sorted(letters) == sizes
    for size, letter in letters.items():
        original = bad[size]
        assert letter["key"] == f"k{size}".encode()
        assert letter["dlq.stage"] == "decode"
        if size > 1_000_000:
            assert letter["dlq.reason"] == (
                f"record value is {size:,} bytes, above kafka.max_record_bytes 1,000,000"
            )
        else:
            assert letter["dlq.reason"].startswith("not JSON")
        if "dlq.value.truncated" in letter:
            assert letter["dlq.value.sha256"] == hashlib.sha256(original).hexdigest()
            assert original.startswith(letter["value"])
            assert len(letter["value"]) > 990_000
        else:
            assert letter["value"] == original
    assert letters[2_500_000]["dlq.value.truncated"] == "true"
    assert letters[1_100_000]["dlq.value.truncated"] == "true"
    assert processor.process.poll() is None, processor.log()
    assert pipeline.health("/healthz") == 200
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
    assert "Traceback" not in processor.log()


def test_a_dead_letter_topic_with_a_small_size_limit_gets_the_evidence_without_the_value(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    pipeline = make_pipeline(
        partitions=1,
        topic_config=BIG_TOPIC,
        dead_letter_topic_config={"max.message.bytes": "100000"},
    )
    topic = pipeline.topics["page_view"]
    value = junk(1_100_000, 1)
    produce(pipeline.bootstrap, topic, [(b"big", value)], config=PRODUCER)
    processor = processors(pipeline)
    wait_for(lambda: len(dead_letters(pipeline)) == 1, 60, "the big one's dead letter")
    # Later, so that it is not in the same produce batch (the broker refuses a batch whole).
    produce(pipeline.bootstrap, topic, [(b"small", b"not json")])
    wait_for(lambda: len(dead_letters(pipeline)) == 2, 60, "both dead letters")
    wait_for(lambda: all_committed(pipeline), 60, "the partition committed past both")
    big, small = sorted(dead_letters(pipeline), key=lambda d: int(d["dlq.source.offset"]))
    assert big["value"] == b""
    assert big["dlq.value.bytes"] == str(len(value))
    assert big["dlq.value.sha256"] == hashlib.sha256(value).hexdigest()
    assert small["value"] == b"not json"
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()


def test_a_dead_letter_that_can_never_be_written_stops_with_one_line_and_commits_nothing_past_it(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess]
) -> None:
    # A dead-letter topic that cannot take even the evidence (one header is over 100 bytes).
    pipeline = make_pipeline(partitions=1, dead_letter_topic_config={"max.message.bytes": "100"})
    topic = pipeline.topics["page_view"]
    produce(pipeline.bootstrap, topic, [(b"k", b"not json")])
    processor = processors(pipeline)
    assert processor.wait(60) == 1
    log = processor.log()
    assert "cannot write a dead letter to" in log
    assert "MSG_SIZE_TOO_LARGE" in log or "RECORD_LIST_TOO_LARGE" in log
    assert "Traceback" not in log
    assert pipeline.committed("page_view").get(0, 0) == 0
