"""Dead-letter evidence and the dead-letter limits."""

from __future__ import annotations

from typing import Any

from processor.config import DeadLetterConfig
from processor.dlq import DeadLetter, DeadLetterGuard, DeadLetterWriter, header_map


class FakeProducer:
    def __init__(self, fail_first: int = 0) -> None:
        self.produced: list[dict[str, Any]] = []
        self.pending: list[Any] = []
        self.fail_first = fail_first

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise BufferError("queue full")
        self.produced.append({"topic": topic, **kwargs})
        self.pending.append(kwargs["on_delivery"])

    def poll(self, timeout: float = 0) -> int:
        served = len(self.pending)
        for callback in self.pending:
            callback(None, None)
        self.pending.clear()
        return served


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
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, "clickstream.dlq", clock=lambda: 1_767_225_600.0)
    done: list[str | None] = []
    writer.write(LETTER, done.append)
    assert writer.outstanding == 1
    assert done == []
    writer.poll()
    assert done == [None]
    assert writer.outstanding == 0
    (sent,) = producer.produced
    assert sent["topic"] == "clickstream.dlq"
    assert (sent["key"], sent["value"]) == (b"anon-1", b'{"not": "valid"}')
    assert sent["headers"][0] == ("trace-id", b"abc")
    assert header_map(sent["headers"]) == {
        "dlq.source.topic": "web.signups",
        "dlq.source.partition": "2",
        "dlq.source.offset": "41",
        "dlq.stage": "mapping",
        "dlq.reason": "user.email (from user.email): not a valid email address",
        "dlq.mapping": "sign-ups",
        "dlq.time": "2026-01-01T00:00:00Z",
    }


def test_full_producer_queue_is_waited_out_not_dropped() -> None:
    producer = FakeProducer(fail_first=3)
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
