"""Dead-letter evidence and the dead-letter limits."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from processor.config import DeadLetterConfig
from processor.dlq import DeadLetter, DeadLetterGuard, DeadLetterWriter, HeaderFilter, header_map
from processor.errors import DeadLetterWriteError
from processor.kafka.memory import MemoryProducer

LETTER = DeadLetter(
    topic="web.signups",
    partition=2,
    offset=41,
    key=b"anon-1",
    value=b'{"not": "valid"}',
    headers=[("trace-id", b"abc"), ("dlq.stage", b"stale-from-earlier")],
    stage="mapping",
    reason="user.email (from user.email): not a valid email address",
    mapping="sign-ups",
)


def test_dead_letter_keeps_key_value_headers_and_adds_evidence() -> None:
    producer = MemoryProducer()
    writer = DeadLetterWriter(producer, "clickstream.dlq", clock=lambda: 1_767_225_600.0)
    done: list[str | None] = []
    writer.write(LETTER, done.append)
    assert writer.outstanding == 1
    assert done == []
    writer.poll()
    assert done == [None]
    assert writer.outstanding == 0
    (sent,) = producer.produced
    assert sent.topic == "clickstream.dlq"
    assert (sent.key, sent.value) == (b"anon-1", b'{"not": "valid"}')
    assert sent.headers[0] == ("trace-id", b"abc")
    assert header_map(sent.headers) == {
        "dlq.source.topic": "web.signups",
        "dlq.source.partition": "2",
        "dlq.source.offset": "41",
        "dlq.stage": "mapping",
        "dlq.reason": "user.email (from user.email): not a valid email address",
        "dlq.mapping": "sign-ups",
        "dlq.time": "2026-01-01T00:00:00Z",
    }


def test_full_producer_queue_is_waited_out_not_dropped() -> None:
    producer = MemoryProducer(queue_full=3)
    writer = DeadLetterWriter(producer, "dlq", clock=lambda: 0.0)
    writer.write(LETTER, lambda error: None)
    assert len(producer.produced) == 1


def test_guard_trips_on_consecutive_dead_letters() -> None:
    guard = DeadLetterGuard(DeadLetterConfig(max_ratio=1.0, window=100, max_consecutive=3))
    assert guard.observe(True) is None
    assert guard.observe(True) is None
    assert guard.observe(False) is None
    assert guard.observe(True) is None
    assert guard.observe(True) is None
    reason = guard.observe(True, "decode: not JSON")
    assert reason == "3 records in a row were dead-lettered (last: decode: not JSON)"


def test_guard_trips_on_ratio_over_a_full_window() -> None:
    guard = DeadLetterGuard(DeadLetterConfig(max_ratio=0.5, window=10, max_consecutive=1000))
    for i in range(9):
        assert guard.observe(i % 3 == 0) is None  # 3 of 9, window not full
    assert guard.observe(True) is None  # 4 of 10 = 40%
    tripped = None
    for _ in range(3):
        tripped = guard.observe(True) or tripped
    assert tripped is not None
    assert "above dead_letter.max_ratio 50%" in tripped


def test_guard_forgets_what_left_the_window() -> None:
    guard = DeadLetterGuard(DeadLetterConfig(max_ratio=0.5, window=4, max_consecutive=1000))
    for dead in (True, True, False, False, False, False, True, True):
        assert guard.observe(dead) is None


def letter_of(value: bytes, key: bytes = b"k", headers: Any = ()) -> DeadLetter:
    return LETTER._replace(value=value, key=key, headers=list(headers), stage="decode")


@pytest.mark.parametrize("length", [999_000, 1_000_000, 1_100_000, 5_000_000])
def test_a_dead_letter_always_fits_and_keeps_the_size_and_hash_of_the_whole(length: int) -> None:
    value = bytes(range(256)) * (length // 256) + b"x" * (length % 256)
    producer = MemoryProducer()
    writer = DeadLetterWriter(producer, "dlq", lambda: 0.0, DeadLetterConfig())
    done: list[str | None] = []
    writer.write(letter_of(value), done.append)
    writer.poll()
    (sent,) = producer.produced
    assert done == [None]
    assert sent.size() <= DeadLetterConfig().max_message_bytes - 1000
    headers = header_map(sent.headers)
    assert headers["dlq.value.truncated"] == "true"
    assert headers["dlq.value.bytes"] == str(length)
    assert headers["dlq.value.sha256"] == hashlib.sha256(value).hexdigest()
    assert value.startswith(sent.value)
    assert len(sent.value) > 990_000  # as much of the evidence as fits


def test_a_dead_letter_that_fits_is_written_whole() -> None:
    value = b"y" * 900_000
    producer = MemoryProducer()
    DeadLetterWriter(producer, "dlq", lambda: 0.0).write(letter_of(value), lambda e: None)
    (sent,) = producer.produced
    assert sent.value == value
    assert "dlq.value.truncated" not in header_map(sent.headers)


def test_a_huge_key_is_truncated_too() -> None:
    key = b"k" * 2_000_000
    producer = MemoryProducer()
    DeadLetterWriter(producer, "dlq", lambda: 0.0).write(letter_of(b"v", key), lambda e: None)
    (sent,) = producer.produced
    headers = header_map(sent.headers)
    assert headers["dlq.key.bytes"] == str(len(key))
    assert headers["dlq.key.sha256"] == hashlib.sha256(key).hexdigest()
    assert sent.value == b"v"
    assert sent.size() < 1_000_000


def test_a_size_the_broker_refuses_is_written_again_as_evidence_only() -> None:
    producer = MemoryProducer(max_bytes=50_000)
    writer = DeadLetterWriter(producer, "dlq", lambda: 0.0)
    done: list[str | None] = []
    value = b"z" * 200_000
    writer.write(letter_of(value, headers=[("trace-id", b"t" * 100)]), done.append)
    writer.poll()  # the refusal: the evidence alone is produced again
    assert done == []
    assert writer.outstanding == 1
    writer.poll()  # its acknowledgement
    assert done == [None]
    assert writer.outstanding == 0
    first, second = producer.produced
    assert first.size() > 50_000
    assert second.value == b""
    headers = header_map(second.headers)
    assert headers["dlq.value.bytes"] == "200000"
    assert headers["dlq.value.sha256"] == hashlib.sha256(value).hexdigest()
    assert headers["dlq.stage"] == "decode"
    assert all(k.startswith("dlq.") for k, _ in second.headers)


def test_a_letter_that_can_never_be_written_is_reported_once_with_the_reason() -> None:
    producer = MemoryProducer(refuse=DeadLetterWriteError("TOPIC_AUTHORIZATION_FAILED: denied"))
    writer = DeadLetterWriter(producer, "dlq", lambda: 0.0)
    done: list[str | None] = []
    writer.write(letter_of(b"v"), done.append)
    writer.poll()
    assert done == ["TOPIC_AUTHORIZATION_FAILED: denied"]
    assert writer.outstanding == 0


def test_a_letter_the_producer_cannot_queue_is_reported_not_raised() -> None:
    producer = MemoryProducer(
        unqueueable=DeadLetterWriteError("_INVALID_ARG: bad", too_large=False)
    )
    writer = DeadLetterWriter(producer, "dlq", lambda: 0.0)
    done: list[str | None] = []
    writer.write(letter_of(b"v"), done.append)
    assert done == ["_INVALID_ARG: bad"]
    assert writer.outstanding == 0


SECRET_HEADERS = [
    ("Authorization", b"Bearer abc"),
    ("cookie", b"sid=1"),
    ("X-Api-Token", b"t"),
    ("client_secret", b"s"),
    ("DB-Password", b"p"),
    ("x-api-key", b"k"),
]


def test_credential_headers_are_not_copied_by_default() -> None:
    producer = MemoryProducer()
    writer = DeadLetterWriter(producer, "dlq", lambda: 0.0, DeadLetterConfig())
    writer.write(letter_of(b"v", headers=[("trace-id", b"abc"), *SECRET_HEADERS]), lambda e: None)
    (sent,) = producer.produced
    names = [k for k, _ in sent.headers]
    assert names[0] == "trace-id"
    assert not {k for k, _ in SECRET_HEADERS} & set(names)
    assert not any(v in b"".join(v for _, v in sent.headers) for _, v in SECRET_HEADERS[:1])
    dropped = header_map(sent.headers)["dlq.headers.dropped"].split(",")
    assert sorted(dropped) == sorted(k for k, _ in SECRET_HEADERS)


def test_an_allow_list_copies_only_what_it_names() -> None:
    producer = MemoryProducer()
    config = DeadLetterConfig(allow_headers=("trace-*",), deny_headers=())
    writer = DeadLetterWriter(producer, "dlq", lambda: 0.0, config)
    headers = [("Trace-Id", b"1"), ("trace-parent", b"2"), ("tenant", b"3"), ("cookie", b"4")]
    writer.write(letter_of(b"v", headers=headers), lambda e: None)
    (sent,) = producer.produced
    assert [k for k, _ in sent.headers if not k.startswith("dlq.")] == [
        "Trace-Id",
        "trace-parent",
    ]


def test_header_filter_matches_case_insensitively_and_never_copies_stale_evidence() -> None:
    f = HeaderFilter(allow=("*",), deny=("*token*",))
    assert f.copies("trace-id")
    assert not f.copies("X-Refresh-TOKEN")
    assert not f.copies("dlq.reason")
    assert not HeaderFilter(allow=()).copies("trace-id")
