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

Original headers are copied only when their names pass the configured allow
and deny patterns (``dead_letter.headers``; by default everything but
``authorization``, ``cookie`` and names with ``token``, ``secret``,
``password``, ``api-key`` or ``credential`` in them); ``dlq.headers.dropped``
names the ones left out.

**A dead letter always fits.** It is made to fit ``dead_letter.max_message_bytes``
before it is produced: a value (or key) too long for it is truncated, and these
headers keep the evidence of the whole:

==========================  ==================================================
``dlq.value.truncated``     ``true``
``dlq.value.bytes``         the original value's size in bytes
``dlq.value.sha256``        SHA-256 (hex) of the whole original value
``dlq.key.*``               the same for a truncated key
==========================  ==================================================

If the broker still refuses the size (a topic with a lower ``max.message.bytes``),
the letter is written once more without the value and the original headers.
Any other write that fails, or that second one, is reported to the caller, which
stops the processor with one line: the record is not done, so its offset is not
committed and a restart tries again. One huge record can therefore never crash
the processor nor hold its partition for good.

A record counts as done only once the broker has acknowledged its dead letter,
so a crash between "rejected" and "written" redelivers it.

:class:`DeadLetterGuard` stops the processor when dead letters pile up (a ratio
over a window of records, or a run of consecutive ones): after a bad deploy it
is better to stop than to dead-letter the whole stream.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, NamedTuple, Protocol

from processor.config import DeadLetterConfig
from processor.errors import DeadLetterWriteError

HEADER_TOPIC: Final = "dlq.source.topic"
HEADER_PARTITION: Final = "dlq.source.partition"
HEADER_OFFSET: Final = "dlq.source.offset"
HEADER_STAGE: Final = "dlq.stage"
HEADER_REASON: Final = "dlq.reason"
HEADER_MAPPING: Final = "dlq.mapping"
HEADER_TIME: Final = "dlq.time"
HEADER_HEADERS_DROPPED: Final = "dlq.headers.dropped"
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
#: Room left for the record's framing in a batch (librdkafka counts more than the bytes
#: of key, value and headers against message.max.bytes).
_FRAMING_BYTES: Final = 1024
#: Original headers and key are kept up to these sizes; the value gets the rest.
_MAX_COPIED_HEADER_BYTES: Final = 64 * 1024
_MAX_KEY_BYTES: Final = 64 * 1024
#: What is kept of the key when the broker refused the letter's size once.
_STUB_KEY_BYTES: Final = 256

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


Delivered = Callable[[DeadLetterWriteError | None], None]


class Producer(Protocol):
    """The dead-letter producer (:class:`processor.kafka.producer.DeadLetterProducer`).

    ``produce`` raises ``BufferError`` while its queue is full and
    :class:`DeadLetterWriteError` when the letter can never be queued; ``on_delivery``
    gets None once the broker acknowledged the write, else the error.
    """

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        on_delivery: Delivered,
    ) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...


class HeaderFilter:
    """Which original header names a dead letter copies: those matching an ``allow``
    pattern and no ``deny`` pattern (shell-style, case-insensitive). Stale ``dlq.*``
    headers of a record that was dead-lettered before are never copied."""

    def __init__(self, allow: Sequence[str] = ("*",), deny: Sequence[str] = ()) -> None:
        self._allow = _patterns(allow)
        self._deny = _patterns(deny)

    def copies(self, name: str) -> bool:
        lowered = name.lower()
        if lowered.startswith("dlq."):
            return False
        allowed = self._allow is not None and self._allow.fullmatch(lowered) is not None
        return allowed and (self._deny is None or self._deny.fullmatch(lowered) is None)


def _patterns(globs: Sequence[str]) -> re.Pattern[str] | None:
    # One compiled alternation per list; fnmatch's translation never backtracks
    # exponentially, and header names are short.
    if not globs:
        return None
    return re.compile("|".join(fnmatch.translate(g.lower()) for g in globs), re.DOTALL)


_COPY_ALL = HeaderFilter()


def dead_letter_headers(
    letter: DeadLetter, now: float, header_filter: HeaderFilter = _COPY_ALL
) -> Headers:
    """The original headers the filter copies, followed by the evidence."""
    kept: Headers = []
    dropped: list[str] = []
    room = _MAX_COPIED_HEADER_BYTES
    for name, value in letter.headers:
        if name.lower().startswith("dlq."):
            continue
        data = value or b""
        if header_filter.copies(name) and len(name) + len(data) <= room:
            kept.append((name, data))
            room -= len(name) + len(data)
        else:
            dropped.append(name)
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
    if dropped:
        names = ",".join(sorted(set(dropped)))
        evidence.append((HEADER_HEADERS_DROPPED, names[:_MAX_REASON]))
    return kept + [(k, v.encode()) for k, v in evidence]


def _headers_size(headers: Headers) -> int:
    return sum(len(k) + len(v) for k, v in headers)


def _truncated(part: str, data: bytes, keep: int) -> tuple[bytes, Headers]:
    """``data`` cut to ``keep`` bytes, and the headers that describe the whole."""
    evidence = [
        (f"dlq.{part}.truncated", b"true"),
        (f"dlq.{part}.bytes", str(len(data)).encode()),
        (f"dlq.{part}.sha256", hashlib.sha256(data).hexdigest().encode()),
    ]
    return data[: max(0, keep)], evidence


#: What the truncation headers of one part add (their values at their longest).
_TRUNCATION_HEADERS_BYTES: Final = 3 * len("dlq.value.truncated") + 4 + 20 + 64


class Fitted(NamedTuple):
    """A dead letter as it is produced: within the size bound."""

    key: bytes | None
    value: bytes | None
    headers: Headers


def fit(letter: DeadLetter, headers: Headers, max_bytes: int, *, stub: bool = False) -> Fitted:
    """Make key, value and headers fit ``max_bytes``, truncating the value (and a huge
    key) with the evidence of the whole in headers. ``stub``: the broker refused the
    fitted letter; keep only the evidence (no original headers, no value)."""
    key, value = letter.key, letter.value
    if stub:
        headers = [(k, v) for k, v in headers if k.startswith("dlq.")]
        extra: Headers = []
        if key is not None and len(key) > _STUB_KEY_BYTES:
            key, extra = _truncated("key", key, _STUB_KEY_BYTES)
        if value:
            _, more = _truncated("value", value, 0)
            extra += more
            value = b""
        return Fitted(key, value, headers + extra)
    if key is not None and len(key) > _MAX_KEY_BYTES:
        key, more = _truncated("key", key, _MAX_KEY_BYTES)
        headers = headers + more
    room = max_bytes - _FRAMING_BYTES - len(key or b"") - _headers_size(headers)
    if value is not None and len(value) > room:
        value, more = _truncated("value", value, room - _TRUNCATION_HEADERS_BYTES)
        headers = headers + more
    return Fitted(key, value, headers)


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

    def __init__(
        self,
        producer: Producer,
        topic: str,
        clock: Callable[[], float],
        config: DeadLetterConfig | None = None,
    ) -> None:
        config = config or DeadLetterConfig()
        self._producer = producer
        self._topic = topic
        self._clock = clock
        self._max_bytes = config.max_message_bytes
        self._filter = HeaderFilter(config.allow_headers, config.deny_headers)
        self.outstanding = 0

    @property
    def topic(self) -> str:
        return self._topic

    def write(self, letter: DeadLetter, on_done: Callable[[str | None], None]) -> None:
        """Produce ``letter``; ``on_done(None)`` once the broker has it, ``on_done(reason)``
        if it can never be written. Never raises on the letter's content or size."""
        self.outstanding += 1
        headers = dead_letter_headers(letter, self._clock(), self._filter)

        def finish(error: DeadLetterWriteError | None) -> None:
            self.outstanding -= 1
            on_done(None if error is None else error.reason)

        def first_try(error: DeadLetterWriteError | None) -> None:
            if error is not None and error.too_large:
                # The topic takes less than max_message_bytes: the evidence alone.
                self._produce(fit(letter, headers, self._max_bytes, stub=True), finish)
                return
            finish(error)

        self._produce(fit(letter, headers, self._max_bytes), first_try)

    def _produce(self, letter: Fitted, delivered: Delivered) -> None:
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # The producer's queue is full: serve delivery reports, then retry.
                self._producer.poll(0.1)
            except DeadLetterWriteError as exc:
                delivered(exc)
                return

    def poll(self) -> None:
        """Serve delivery reports (calls ``on_done``)."""
        self._producer.poll(0)


class DeadLetterGuard:
    """Trips when too much is dead-lettered: a run of ``max_consecutive`` dead letters,
    or dead letters above ``max_ratio`` of the last ``window`` outcomes. An outcome is a
    record that went through (mapped or filtered) or one dead letter, whatever its stage
    (:mod:`processor.rejection` feeds both); with one mapping a topic, that is a record."""

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
