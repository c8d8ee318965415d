"""Accounting for the fault suite: what was produced, what should come of it, and what did.

A :class:`Ledger` produces records onto a pipeline's topics and remembers each one with
its coordinates (topic, partition, offset) and its fate: the TikTok event (name and
``event_id``, the record's own id field, as ``config/example.yaml`` maps it) it must
become, or the reason it must be dead-lettered (a poison record). After a scenario,
:func:`settle` waits, bounded, until every expected event is accepted by the sandbox and
every poison record is on the dead-letter topic, then :func:`account` compares
identities, not counts:

* accepted: expected ``(event, event_id)`` pairs the sandbox stores (it deduplicates by
  pixel, event and event id, and counts the duplicates it refused);
* dead-lettered: distinct source records (``dlq.source.*`` headers) on the dead-letter
  topic; ``dlq dups`` the extra copies of a source record written more than once;
* lost: an expected event neither accepted nor dead-lettered, or a poison record not
  dead-lettered. Each lost record is described with its partition's committed offset,
  which tells a true loss (committed past) from a stuck one (not committed).

The rows go to a session-wide :class:`FaultTable` that ``conftest.py`` prints at the end.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from devkit.kafka import Record, committed_offsets, consume_all, produce
from processor.dlq import header_map
from processor.sample import generate
from tests.integration.pipeline import Pipeline, ProcessorProcess, wait_for

#: ``FAULTS_SOAK=1`` (``make soak``) runs every scenario bigger and longer.
SOAK = os.environ.get("FAULTS_SOAK", "").strip() not in ("", "0")

#: Sample records start this long ago: old enough that none is in the future for the
#: processor, young enough that none is stale (28 days).
SAMPLE_AGE_S = 600.0

#: The sandbox keeps every accepted event by default up to this many (more would evict
#: stored events and make identity accounting impossible).
MAX_ACCOUNTED_EVENTS = 100_000


def size(ci: int, soak: int) -> int:
    """``ci`` in the CI-sized run, ``soak`` under ``FAULTS_SOAK=1``."""
    return soak if SOAK else ci


def patience(seconds: float) -> float:
    """A wait's bound: the soak run moves several times more records."""
    return seconds * 5 if SOAK else seconds


@dataclass(frozen=True, slots=True)
class Produced:
    """One record on a source topic and what must become of it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: The TikTok event the record must become (None: filtered out, or poison).
    event: str | None = None
    event_id: str | None = None
    #: The stage at which the record must be dead-lettered (None: a good record).
    poison: str | None = None

    @property
    def source(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


class Ledger:
    """Every record a scenario produced, with its coordinates and its expected fate."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.records: list[Produced] = []
        self._event_ids: set[str] = set()

    def sample(self, count: int, seed: int) -> list[Produced]:
        """Produce ``count`` sample records (``processor.sample``) across the four topics."""
        records, _ = generate(
            count, seed=seed, start=time.time() - SAMPLE_AGE_S, topics=self.pipeline.topics
        )
        by_topic: dict[str, list[tuple[bytes | None, bytes, str | None]]] = defaultdict(list)
        for record in records:
            by_topic[record.topic].append((record.key, record.value, record.expected_event))
        produced: list[Produced] = []
        for topic, items in by_topic.items():
            coordinates = produce(self.pipeline.bootstrap, topic, [(k, v) for k, v, _ in items])
            for (key, value, event), (partition, offset) in zip(items, coordinates, strict=True):
                event_id = str(orjson.loads(value)["event_id"]) if event else None
                if event_id is not None:
                    assert event_id not in self._event_ids, f"event id {event_id} produced twice"
                    self._event_ids.add(event_id)
                produced.append(
                    Produced(topic, partition, offset, key, value, event=event, event_id=event_id)
                )
        self.records.extend(produced)
        return produced

    def poison(
        self,
        kind: str,
        items: Iterable[tuple[bytes | None, bytes | None, str]],
        *,
        config: Mapping[str, Any] | None = None,
    ) -> list[Produced]:
        """Produce ``(key, value, stage)`` records onto ``kind``'s topic, each one expected
        on the dead-letter topic with that ``dlq.stage``."""
        topic = self.pipeline.topics[kind]
        items = list(items)
        coordinates = produce(
            self.pipeline.bootstrap, topic, [(k, v) for k, v, _ in items], config=config
        )
        produced = [
            Produced(topic, partition, offset, key, value, poison=why)
            for (key, value, why), (partition, offset) in zip(items, coordinates, strict=True)
        ]
        self.records.extend(produced)
        return produced

    @property
    def expected_events(self) -> list[Produced]:
        return [r for r in self.records if r.event is not None]

    @property
    def poisoned(self) -> list[Produced]:
        return [r for r in self.records if r.poison is not None]

    def ends(self) -> dict[str, dict[int, int]]:
        """{topic: {partition: end offset}} of what was produced."""
        ends: dict[str, dict[int, int]] = defaultdict(dict)
        for record in self.records:
            current = ends[record.topic].get(record.partition, 0)
            ends[record.topic][record.partition] = max(current, record.offset + 1)
        return ends

    def committed(self) -> dict[str, dict[int, int]]:
        """The pipeline group's committed offsets for every topic produced to."""
        return {
            topic: committed_offsets(self.pipeline.bootstrap, self.pipeline.group, topic)
            for topic in self.ends()
        }

    def uncommitted(self) -> dict[str, int]:
        """{"topic[partition]": records past the committed offset} where any are."""
        left: dict[str, int] = {}
        for topic, committed in self.committed().items():
            for partition, end in self.ends()[topic].items():
                behind = end - committed.get(partition, 0)
                if behind > 0:
                    left[f"{topic}[{partition}]"] = behind
        return left


def accepted_events(pipeline: Pipeline) -> set[tuple[str, str]]:
    """(event_id, event) of every live event the sandbox stores (one per dedup key)."""
    stored = pipeline.sandbox.state.events(scope="live", limit=MAX_ACCOUNTED_EVENTS + 1)
    return {(e.event_id, e.event) for e in stored if e.event_id is not None}


def delivered(pipeline: Pipeline, records: Iterable[Produced]) -> int:
    """How many of ``records``' expected events the sandbox has accepted."""
    wanted = {(r.event_id, r.event) for r in records if r.event is not None}
    return len(wanted & accepted_events(pipeline))


def dead_letter_sources(pipeline: Pipeline) -> tuple[Counter[tuple[str, int, int]], list[Record]]:
    """How often each source record is on the dead-letter topic, and the letters."""
    letters = consume_all(pipeline.bootstrap, pipeline.dead_letter_topic)
    sources: Counter[tuple[str, int, int]] = Counter()
    for letter in letters:
        headers = header_map(letter.headers)
        sources[
            (
                str(headers["dlq.source.topic"]),
                int(headers["dlq.source.partition"]),
                int(headers["dlq.source.offset"]),
            )
        ] += 1
    return sources, letters


@dataclass
class Row:
    """One scenario's accounting: a line of the table."""

    fault: str
    protocol: str
    produced: int
    expected: int
    accepted: int
    duplicates: int
    dead_lettered: int
    dlq_dups: int
    lost: int
    stop_s: float | None
    #: Expected events delivered to the dead-letter topic instead of TikTok.
    good_dead_lettered: int = 0
    #: Events the sandbox accepted that no record should have produced.
    unexpected: int = 0
    #: Human-readable description of every lost record (at most a few).
    lost_detail: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Nothing lost, every good event accepted, nothing made up, each poison record
        dead-lettered: fails the test with the evidence."""
        assert self.lost == 0, f"{self.fault} ({self.protocol}): {self.lost} LOST:\n" + "\n".join(
            self.lost_detail
        )
        assert self.good_dead_lettered == 0, (
            f"{self.fault} ({self.protocol}): {self.good_dead_lettered} good events were "
            "dead-lettered instead of delivered"
        )
        assert self.unexpected == 0, (
            f"{self.fault} ({self.protocol}): {self.unexpected} accepted events match no "
            "expected (event, event_id)"
        )
        assert self.accepted == self.expected


def account(
    ledger: Ledger,
    *,
    fault: str,
    protocol: str,
    stop_s: float | None,
) -> Row:
    """Compare what was produced with what the sandbox and the dead-letter topic hold."""
    pipeline = ledger.pipeline
    stats = pipeline.sandbox.stats()
    stored = stats["stored"]["documents"]
    assert stored == stats["events"]["accepted"] + stats["test_events"]["accepted"], (
        f"the sandbox evicted stored events ({stats['stored']}): accounting needs them all"
    )
    accepted = accepted_events(pipeline)
    sources, _ = dead_letter_sources(pipeline)
    expected = ledger.expected_events
    expected_pairs = {(r.event_id, r.event) for r in expected}
    got = good_dead_lettered = 0
    missing: list[Produced] = []
    for record in expected:
        if (record.event_id, record.event) in accepted:
            got += 1
        elif record.source in sources:
            good_dead_lettered += 1
        else:
            missing.append(record)
    missing.extend(r for r in ledger.poisoned if r.source not in sources)
    lost_detail = describe_lost(ledger, missing) if missing else []
    return Row(
        fault=fault,
        protocol=protocol,
        produced=len(ledger.records),
        expected=len(expected),
        accepted=got,
        duplicates=int(stats["events"]["duplicates"]),
        dead_lettered=len(sources),
        dlq_dups=sum(n - 1 for n in sources.values()),
        lost=len(missing),
        stop_s=stop_s,
        good_dead_lettered=good_dead_lettered,
        unexpected=len(accepted - expected_pairs),
        lost_detail=lost_detail,
    )


def describe_lost(ledger: Ledger, missing: list[Produced], limit: int = 20) -> list[str]:
    """Each missing record, and whether its partition committed past it (a loss) or not
    (stuck: a restart would deliver it)."""
    try:
        committed = ledger.committed()
    except Exception as exc:  # the description must not hide the failure itself
        committed = {}
        lines = [f"(committed offsets unavailable: {exc})"]
    else:
        lines = []
    for record in missing[:limit]:
        position = committed.get(record.topic, {}).get(record.partition)
        verdict = (
            "committed past it: LOST"
            if position is not None and position > record.offset
            else f"not committed (committed offset {position}): stuck"
        )
        what = f"poison ({record.poison})" if record.poison else f"{record.event} {record.event_id}"
        lines.append(f"  {record.topic}[{record.partition}]@{record.offset} {what}: {verdict}")
    if len(missing) > limit:
        lines.append(f"  … and {len(missing) - limit} more")
    return lines


class ProcessorDied(AssertionError):
    """The processor a scenario waits on exited by itself."""


def wait_running(
    processor: ProcessorProcess, condition: Callable[[], bool], timeout: float, what: str
) -> None:
    """``wait_for`` that fails at once, with the log, if ``processor`` exits meanwhile."""

    def check() -> bool:
        if processor.process.poll() is not None:
            raise ProcessorDied(
                f"the processor exited ({processor.process.returncode}) while waiting for "
                f"{what}:\n{processor.log()}"
            )
        return condition()

    wait_for(check, patience(timeout), what)


def settle(ledger: Ledger, timeout: float, processor: ProcessorProcess | None = None) -> bool:
    """Wait until the sandbox holds every expected event, the dead-letter topic every
    poison record, and the group has committed every produced offset. False on timeout
    (the accounting then says what is missing); :class:`ProcessorDied` when
    ``processor`` exits meanwhile."""
    pipeline = ledger.pipeline
    expected = len(ledger.expected_events)
    poisoned = len(ledger.poisoned)
    timeout = patience(timeout)
    deadline = time.monotonic() + timeout

    def alive() -> None:
        if processor is not None and processor.process.poll() is not None:
            raise ProcessorDied(
                f"the processor exited ({processor.process.returncode}):\n{processor.log()}"
            )

    def delivered() -> bool:
        alive()
        if pipeline.sandbox.stats()["events"]["accepted"] < expected:
            return False
        return poisoned == 0 or len(dead_letter_sources(pipeline)[0]) >= poisoned

    def committed() -> bool:
        alive()
        return not ledger.uncommitted()

    try:
        wait_for(delivered, timeout, "every expected event and dead letter", every=0.25)
        left = max(1.0, deadline - time.monotonic())
        wait_for(committed, left, "every offset committed", every=0.5)
    except ProcessorDied:
        raise
    except AssertionError:
        return False
    return True


def conclude(
    ledger: Ledger,
    processor: ProcessorProcess,
    table: FaultTable,
    *,
    fault: str,
    protocol: str = "classic",
    timeout: float = 120.0,
    stop_s: float | None = None,
) -> Row:
    """The end of every scenario: wait until everything is accounted for, stop the last
    processor with SIGTERM, add the row to the table, then check it (lost = 0 first)."""
    settled = settle(ledger, timeout, processor)
    took: float | None = None
    stop_error: AssertionError | None = None
    if settled:
        try:
            took = stop(processor, timeout=60)
        except AssertionError as exc:
            stop_error = exc
    row = table.add(
        account(ledger, fault=fault, protocol=protocol, stop_s=took if stop_s is None else stop_s)
    )
    row.check()
    assert settled, (
        f"{fault} ({protocol}): not settled in {patience(timeout):.0f}s; records past the committed "
        f"offsets: {ledger.uncommitted()}\n{processor.log()}"
    )
    if stop_error is not None:
        raise stop_error
    return row


def stop(processor: ProcessorProcess, timeout: float) -> float:
    """SIGTERM, wait for a clean exit (status 0); returns how long the stop took."""
    began = time.monotonic()
    processor.signal(signal.SIGTERM)
    status = processor.wait(timeout)
    took = time.monotonic() - began
    assert status == 0, f"exit status {status} after SIGTERM:\n{processor.log()}"
    return took


class FaultTable:
    """The rows of a session, printed at its end by ``conftest.py``."""

    COLUMNS = (
        "fault",
        "protocol",
        "produced",
        "expected events",
        "accepted (distinct)",
        "duplicates",
        "dead-lettered",
        "dlq dups",
        "lost",
        "stop time (s)",
    )

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    def lines(self) -> list[str]:
        cells = [
            [
                row.fault,
                row.protocol,
                str(row.produced),
                str(row.expected),
                str(row.accepted),
                str(row.duplicates),
                str(row.dead_lettered),
                str(row.dlq_dups),
                str(row.lost),
                "-" if row.stop_s is None else f"{row.stop_s:.1f}",
            ]
            for row in self.rows
        ]
        widths = [max(len(c[i]) for c in [list(self.COLUMNS), *cells]) for i in range(10)]

        def line(values: list[str]) -> str:
            return (
                "| "
                + " | ".join(
                    v.ljust(w) if i < 2 else v.rjust(w)
                    for i, (v, w) in enumerate(zip(values, widths, strict=True))
                )
                + " |"
            )

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return [line(list(self.COLUMNS)), rule, *(line(c) for c in cells), *self.notes]
