"""Dead letters: the evidence of a record that can never be sent, and the limits.

A dead letter carries the original key and value bytes unchanged, the original
headers, and these headers (all UTF-8 text):

==========================  ==================================================
``dlq.source.topic``        the record's topic
``dlq.source.partition``    its partition
``dlq.source.offset``       its offset
``dlq.stage``               decode, input-schema, mapping, stale, output-schema, api
``dlq.reason``              why, naming the field (never the value, never the token)
``dlq.mapping``             the mapping that rejected it (absent for decode/input-schema)
``dlq.time``                when it was dead-lettered, ISO-8601 UTC
==========================  ==================================================

A record counts as done only once the broker has acknowledged its dead letter,
so a crash between "rejected" and "written" redelivers it.

:class:`DeadLetterGuard` stops the processor when dead letters pile up (a ratio
over a window of records, or a run of consecutive ones): after a bad deploy it
is better to stop than to dead-letter the whole stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol

from processor.config import DeadLetterConfig

HEADER_TOPIC: Final = "dlq.source.topic"
HEADER_PARTITION: Final = "dlq.source.partition"
HEADER_OFFSET: Final = "dlq.source.offset"
HEADER_STAGE: Final = "dlq.stage"
HEADER_REASON: Final = "dlq.reason"
HEADER_MAPPING: Final = "dlq.mapping"
HEADER_TIME: Final = "dlq.time"
DLQ_HEADERS: Final = (
    HEADER_TOPIC,
    HEADER_PARTITION,
    HEADER_OFFSET,
    HEADER_STAGE,
    HEADER_REASON,
    HEADER_MAPPING,
    HEADER_TIME,
)
_MAX_REASON: Final = 2000

Headers = list[tuple[str, bytes]]


class DeadLetter(NamedTuple):
    """What to write for one rejected record (or one rejected event of it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]
    stage: str
    reason: str
    mapping: str | None


class Producer(Protocol):
    """The part of ``confluent_kafka.Producer`` dead-lettering uses."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...


def dead_letter_headers(letter: DeadLetter, now: float) -> Headers:
    """The original headers (minus stale dlq.* ones) followed by the evidence."""
    kept = [(k, v or b"") for k, v in letter.headers if not k.startswith("dlq.")]
    evidence = [
        (HEADER_TOPIC, letter.topic),
        (HEADER_PARTITION, str(letter.partition)),
        (HEADER_OFFSET, str(letter.offset)),
        (HEADER_STAGE, letter.stage),
        (HEADER_REASON, letter.reason[:_MAX_REASON]),
        (HEADER_TIME, datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")),
    ]
    if letter.mapping:
        evidence.insert(5, (HEADER_MAPPING, letter.mapping))
    return kept + [(k, v.encode()) for k, v in evidence]


def header_map(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """The dlq.* headers of a dead letter as text (the last of each name wins)."""
    out: dict[str, str] = {}
    for key, value in headers or ():
        if key.startswith("dlq.") and value is not None:
            out[key] = value.decode("utf-8", "replace")
    return out


class DeadLetterWriter:
    """Writes dead letters; reports each broker acknowledgement through ``on_done``.

    ``on_done(error)`` runs on the thread that polls the producer (the poll
    thread); ``error`` is None when the broker acknowledged the write.
    """

    def __init__(self, producer: Producer, topic: str, clock: Callable[[], float]) -> None:
        self._producer = producer
        self._topic = topic
        self._clock = clock
        self.outstanding = 0

    @property
    def topic(self) -> str:
        return self._topic

    def write(self, letter: DeadLetter, on_done: Callable[[str | None], None]) -> None:
        self.outstanding += 1

        def delivered(error: Any, _message: Any) -> None:
            self.outstanding -= 1
            on_done(None if error is None else str(error))

        headers = dead_letter_headers(letter, self._clock())
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=letter.value,
                    key=letter.key,
                    headers=headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # The producer's queue is full: serve delivery reports, then retry.
                self._producer.poll(0.1)

    def poll(self) -> None:
        """Serve delivery reports (calls ``on_done``)."""
        self._producer.poll(0)


class DeadLetterGuard:
    """Trips when too much is dead-lettered: a run of ``max_consecutive`` records, or
    more than ``max_ratio`` of the last ``window`` records."""

    def __init__(self, config: DeadLetterConfig) -> None:
        self._config = config
        self._recent: deque[bool] = deque(maxlen=config.window)
        self._dead_in_window = 0
        self._consecutive = 0
        self.tripped: str | None = None

    def observe(self, dead_lettered: bool, reason: str = "") -> str | None:
        """Record one record's fate; returns why the guard tripped, once it has."""
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._dead_in_window -= 1
        recent.append(dead_lettered)
        if not dead_lettered:
            # A record that went through never raises the ratio nor the run.
            self._consecutive = 0
            return self.tripped
        self._dead_in_window += 1
        self._consecutive += 1
        if self.tripped is None:
            self.tripped = self._check(reason)
        return self.tripped

    def _check(self, reason: str) -> str | None:
        c = self._config
        last = f" (last: {reason})" if reason else ""
        if self._consecutive >= c.max_consecutive:
            return f"{self._consecutive} records in a row were dead-lettered{last}"
        full = len(self._recent) == self._recent.maxlen
        if full and self._dead_in_window / len(self._recent) > c.max_ratio:
            share = self._dead_in_window / len(self._recent)
            return (
                f"{share:.0%} of the last {len(self._recent)} records were dead-lettered, "
                f"above dead_letter.max_ratio {c.max_ratio:.0%}{last}"
            )
        return None
