"""The run loop: consumer group → transform → batch → send → ack → commit.

Threads: this module's loop owns every Kafka call (consume, pause/resume,
commit, the dead-letter producer's delivery reports), the transform and the
batching, on one thread. Requests to TikTok run on the sender's own thread; its
outcomes come back through :meth:`BatchSender.poll_completions`, which this loop
drains every turn into the offset trackers.

Delivery guarantees (DESIGN §3):

- a record is *done* when each of its events is accepted by TikTok (or
  dead-lettered after TikTok rejected it) and each of its dead letters is
  acknowledged by the broker; a partition commits its lowest not-done offset;
- memory is bounded: at most ``max_buffered_events`` events exist between the
  consumer and TikTok; above that every partition is paused (consume() keeps
  the membership alive) and resumed below half of it;
- a halted sender (token or permission error) pauses consumption and commits
  nothing past the held events; it resumes when the token is rotated;
- on revoke, the revoked partitions' work is flushed and waited for (up to
  ``drain_timeout_s``), their watermark committed synchronously, and their
  trackers fenced so late completions change nothing;
- on stop (SIGTERM/SIGINT): no new records, batches flushed, in-flight work
  waited for up to the drain timeout, offsets committed, the group left.

Readiness (``/readyz``): not halted, the Kafka brokers reachable (see
:class:`BrokerHealth`), and partitions assigned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from processor.batching import Batch, Batcher, PendingEvent
from processor.config import Config
from processor.dlq import DeadLetter, DeadLetterGuard, DeadLetterWriter, header_map
from processor.liveness import StallWatch
from processor.metrics import Metrics
from processor.offsets import OffsetTracker, PartitionTracker, TopicPartition
from processor.source import KafkaError, Message, Source, message_headers
from processor.transform import Transformer
from processor.types import Stage

log = logging.getLogger(__name__)

#: Records read per consume() call.
CONSUME_BATCH = 500
#: How often gauges (lag, oldest unfinished) are refreshed, seconds.
GAUGE_INTERVAL_S = 2.0
#: How long a stop waits for the broker to confirm the final commit, seconds.
FINAL_COMMIT_TIMEOUT_S = 10.0
#: How soon offsets are committed after a dead letter is acknowledged, seconds.
DEAD_LETTER_COMMIT_S = 0.1
#: A stop takes at most ``drain_timeout_s`` plus this: the final commit, closing the
#: sender and leaving the group (the chart's grace period must allow for it).
STOP_OVERHEAD_S = 15.0
#: How often librdkafka reports statistics, ms: how an outage is seen to end.
STATS_INTERVAL_MS = 5000
#: The readiness reason of a member without partitions (``--workers`` tells it apart).
NO_PARTITIONS = "no partitions assigned"


class BatchOutcome(Protocol):
    """What became of one submitted batch (the sender's result type)."""

    @property
    def batch(self) -> Batch: ...

    @property
    def accepted(self) -> Sequence[PendingEvent]: ...

    @property
    def rejected(self) -> Sequence[tuple[PendingEvent, str]]: ...


class BatchSender(Protocol):
    """The sink as the loop uses it (see :mod:`processor.sink`)."""

    def start(self) -> None: ...

    def submit(self, batch: Batch) -> None: ...

    def poll_completions(self) -> Sequence[BatchOutcome]: ...

    def wait(self, timeout: float) -> bool: ...

    @property
    def halted(self) -> str | None: ...

    def close(self, timeout: float) -> None: ...


class RecordRef:
    """A consumed record while its events are on their way: how to ack it and
    what its dead letter would carry (read from the message only if it is needed)."""

    __slots__ = ("message", "offset", "source", "timestamp", "tracker")

    def __init__(
        self,
        tracker: PartitionTracker,
        offset: int,
        timestamp: float,
        message: Message,
        source: tuple[str, int, int],
    ) -> None:
        self.tracker = tracker
        self.offset = offset
        self.timestamp = timestamp
        self.message = message
        self.source = source  # (topic, partition, offset) the event ids derive from


@dataclass
class RunReport:
    """Counts of one run, printed by ``replay-dlq`` and logged at stop."""

    records: int = 0
    filtered: int = 0
    events_mapped: int = 0
    events_accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: Records skipped as copies (replay-dlq: a dead letter written twice).
    duplicates: int = 0

    def reject(self, stage: str) -> None:
        # Plain text keys: a Stage member would not survive JSON encoding of the summary.
        name = str(stage)
        self.rejected[name] = self.rejected.get(name, 0) + 1


class StopProcessing(Exception):
    """Ends the loop with a reason (dead-letter limit, a dead letter that cannot be
    written, no dead-letter topic for a rejection)."""


@dataclass
class Mode:
    """What differs between ``run`` and ``replay-dlq``.

    ``dead_letter``: rejections go to the dead-letter topic (``run``) or are only
    counted (``replay-dlq``, whose input already is the dead-letter topic).
    ``stop_at_end``: stop once every assigned partition is read to its end and
    everything is done. ``identity`` gives the (topic, partition, offset) a
    record is transformed as (a dead letter is transformed as its source record,
    so its event ids do not change), or None for a record to skip (a second dead
    letter of a source record already replayed).
    """

    dead_letter: bool = True
    stop_at_end: bool = False
    identity: Callable[[Message], tuple[str, int, int] | None] | None = None


class DeadLetterIdentity:
    """A dead letter's source record, from its headers; None for a source record met
    before in this replay. A record can be dead-lettered more than once (a crash after
    the dead letter was written and before its offset was committed writes it again on
    redelivery): replaying it once re-runs every mapping of the record, so the copies
    are skipped."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int, int]] = set()

    def __call__(self, message: Message) -> tuple[str, int, int] | None:
        headers = header_map(message_headers(message))
        try:
            source = (
                headers["dlq.source.topic"],
                int(headers["dlq.source.partition"]),
                int(headers["dlq.source.offset"]),
            )
        except (KeyError, ValueError):
            source = (
                str(message.topic()),
                int(message.partition() or 0),
                int(message.offset() or 0),
            )
        if source in self._seen:
            return None
        self._seen.add(source)
        return source


SourceFactory = Callable[..., Source]


class BrokerHealth:
    """Whether the Kafka brokers answer, for ``/readyz``.

    librdkafka reports ``_ALL_BROKERS_DOWN`` (and ``_TRANSPORT`` for each failed
    connection) through its error callback, not through ``consume()``, and never
    says that a broker came back. So an outage starts with that error and ends
    with the next sign that a broker answers: a record, an assignment, or a
    statistics report with a broker connection up. Both callbacks run inside
    ``consume()``, on the poll thread.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.down: str | None = None
        self.fatal: str | None = None

    def settings(self) -> dict[str, Any]:
        """The consumer settings that route librdkafka's errors and statistics here."""
        return {
            "error_cb": self.error,
            "stats_cb": self.stats,
            "statistics.interval.ms": STATS_INTERVAL_MS,
        }

    def error(self, error: KafkaError) -> None:
        code = error.code()
        if error.fatal():
            kind, self.fatal = "fatal", error.str()
        elif code == KafkaError._ALL_BROKERS_DOWN:
            kind = "all_brokers_down"
        elif code == KafkaError._TRANSPORT:
            kind = "transport"
        else:
            kind = "other"
        self._metrics.kafka_errors.labels(kind).inc()
        if kind == "all_brokers_down":
            if self.down is None:
                log.error("Kafka unreachable: %s", error.str(), extra={"code": error.name()})
            self.down = f"Kafka brokers unreachable: {error.str()}"
        elif kind == "transport":
            # librdkafka logs every failed connection itself (one broker may be down
            # while the others serve): not an outage on its own.
            log.debug("Kafka connection error: %s", error.str())
        else:
            log.warning("Kafka client error: %s", error.str(), extra={"code": error.name()})

    def stats(self, raw: str) -> None:
        if self.down is None:
            return
        try:
            brokers = orjson.loads(raw).get("brokers") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return
        if any(isinstance(b, dict) and b.get("state") == "UP" for b in brokers.values()):
            self.answered()

    def answered(self) -> None:
        """A broker answered: any outage is over."""
        if self.down is not None:
            self.down = None
            log.warning("Kafka reachable again")


class Processor:
    """One consumer group member's pipeline."""

    def __init__(
        self,
        config: Config,
        transformer: Transformer,
        metrics: Metrics,
        sender: BatchSender,
        *,
        source_factory: SourceFactory,
        topics: Sequence[str] | None = None,
        dead_letters: DeadLetterWriter | None = None,
        mode: Mode | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._delivery = config.delivery
        self._transformer = transformer
        self._metrics = metrics
        self._sender = sender
        self._dead_letters = dead_letters
        self._mode = mode or Mode()
        self._clock = clock
        self._offsets = OffsetTracker()
        self._batcher = Batcher(
            max_events=self._delivery.max_batch_events, linger_s=self._delivery.linger_ms / 1000
        )
        self._guard = DeadLetterGuard(config.dead_letter)
        self._broker = BrokerHealth(metrics)
        extra = self._broker.settings()
        if self._mode.stop_at_end:
            extra["enable.partition.eof"] = True
        self._source = source_factory(
            config.kafka,
            list(topics or transformer.topics),
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
            on_commit_failed=self._commit_failed,
            extra=extra,
        )
        self._stalls = StallWatch(self._delivery.stall_timeout_s)
        self._outstanding_events = 0
        self._stop_requested = False
        self._stop_reason: str | None = None
        self._last_commit = 0.0
        self._last_gauges = 0.0
        self.last_loop = clock()
        self._at_end: set[TopicPartition] = set()
        self._rewound: set[TopicPartition] = set()  # partitions whose rewind was logged
        self.report = RunReport()
        self._halt_logged: str | None = None
        self._stall_logged = False
        self._dead_letter_error: str | None = None
        self._final_commit_done = False
        self._closing = False
        self._dead_letter_acked = False
        # Counted per turn and added to the metrics once per turn: a prometheus
        # inc() takes a lock, too dear once per record.
        self._consumed_now: dict[str, int] = {}
        self._filtered_now: dict[str, int] = {}
        self._mapped_now: dict[str, int] = {}

    # -- control ------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful stop (safe from a signal handler)."""
        self._stop_requested = True

    @property
    def ready(self) -> tuple[bool, str]:
        """Not halted, the brokers reachable, partitions assigned, and none of them
        stalled (for ``/readyz``)."""
        halted = self._sender.halted
        if halted:
            return False, f"halted: {halted}"
        down = self._broker.down
        if down:
            return False, down
        if not self._source.assignment:
            return False, NO_PARTITIONS
        stalled = self._stalls.describe()
        if stalled:
            return False, f"stalled: {stalled}"
        return True, "ok"

    def run(self) -> int:
        """Process until stopped. Returns the exit status: 0 on a clean stop."""
        self.start()
        while self.turn():
            pass
        return self.shutdown()

    # -- the loop -------------------------------------------------------------

    def start(self) -> None:
        """Start the sender and join the consumer group."""
        self._sender.start()
        self._source.subscribe()

    def turn(self) -> bool:
        """One iteration of the loop; False once the processor should stop."""
        if self._stop_requested:
            return False
        try:
            self._turn()
        except StopProcessing as exc:
            self._stop_reason = str(exc)
            return False
        return not self._stop_requested

    def _turn(self) -> None:
        now = self._clock()
        self.last_loop = now
        self._collect()
        self._batches_due(now)
        self._commit_if_due(now)
        self._backpressure()
        self._gauges(now)
        messages = self._source.consume(CONSUME_BATCH, self._poll_timeout(now))
        if messages and self._broker.down is not None:
            self._broker.answered()
        now = self._clock()
        for message in messages:
            self._handle(message, now)
        self._flush_counts()
        if self._guard.tripped is not None:
            raise StopProcessing(f"dead-letter limit reached: {self._guard.tripped}")
        if self._dead_letter_error is not None:
            raise StopProcessing(self._dead_letter_error)
        if self._broker.fatal is not None:
            raise StopProcessing(f"fatal Kafka error: {self._broker.fatal}")
        if self._mode.stop_at_end and self._finished():
            self._stop_requested = True

    def _flush_counts(self) -> None:
        m = self._metrics
        for counts, metric in (
            (self._consumed_now, m.records_consumed),
            (self._filtered_now, m.records_filtered),
            (self._mapped_now, m.events_mapped),
        ):
            for label, n in counts.items():
                metric.labels(label).inc(n)
            counts.clear()

    def _poll_timeout(self, now: float) -> float:
        if self._outstanding_events or (
            self._dead_letters is not None and self._dead_letters.outstanding
        ):
            due = self._batcher.next_due()
            return 0.01 if due is None else max(0.0, min(0.05, due - now))
        return 0.2

    def _collect(self) -> None:
        """Acknowledge what the sender and the dead-letter producer finished."""
        for outcome in self._sender.poll_completions():
            self._outstanding_events -= len(outcome.batch.items)
            now = self._clock()
            for item in outcome.accepted:
                ref: RecordRef = item.ref
                self.report.events_accepted += 1
                if ref.tracker.active:
                    self._metrics.end_to_end_latency.observe(max(0.0, now - ref.timestamp))
                    ref.tracker.finish(ref.offset)
            for item, reason in outcome.rejected:
                self._reject(item.ref, Stage.API, reason, item.event.mapping)
                if item.ref.tracker.active:
                    # TikTok refusing everything after a bad deploy must trip the limit as
                    # surely as records that never map: the guard counts these too.
                    self._guard.observe(True, f"{Stage.API}: {reason}")
        if self._dead_letters is not None:
            self._dead_letters.poll()
        self._metrics.buffered_events.set(self._outstanding_events)
        halted = self._sender.halted
        if halted and not self._halt_logged:
            log.error("delivery halted, consumption paused, nothing committed past it: %s", halted)
        # The sender logs what ends a halt or prolongs it, as only it knows which: a new
        # token tried, refused too ("still halted"), or accepted ("delivery resumed").
        self._halt_logged = halted

    def _handle(self, message: Message, now: float) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self._at_end.add(
                    TopicPartition(str(message.topic()), int(message.partition() or 0))
                )
                return
            if error.fatal():
                raise StopProcessing(f"fatal Kafka error: {error}")
            log.warning("consumer error: %s", error, extra={"code": error.name()})
            return
        topic, partition, offset = (
            str(message.topic()),
            int(message.partition() or 0),
            int(message.offset() or 0),
        )
        # A plain tuple equals the TopicPartition key: no NamedTuple built per record.
        tracker = self._offsets.get((topic, partition))
        if tracker is None:  # not ours (any more): the new owner reads it
            return
        if tracker.seen(offset):
            self._redelivered(tracker.tp, offset)
            return
        if self._mode.stop_at_end:
            self._at_end.discard(tracker.tp)
        identity = (
            self._mode.identity(message) if self._mode.identity else (topic, partition, offset)
        )
        self._consumed_now[topic] = self._consumed_now.get(topic, 0) + 1
        self.report.records += 1
        if identity is None:  # replay: a copy of a dead letter already replayed
            tracker.track(offset, 0, now)
            self.report.duplicates += 1
            return
        result = self._transformer.transform(identity[0], identity[1], identity[2], message.value())
        kind, stamp = message.timestamp()
        timestamp = stamp / 1000.0 if kind and stamp > 0 else now
        work = len(result.events) + len(result.rejected)
        tracker.track(offset, work, timestamp)
        if not work:
            self.report.filtered += 1
            self._filtered_now[topic] = self._filtered_now.get(topic, 0) + 1
            self._guard.observe(False)
            return
        ref = RecordRef(tracker, offset, timestamp, message, identity)
        mapped = self._mapped_now
        for event in result.events:
            name = event.payload["event"]
            mapped[name] = mapped.get(name, 0) + 1
            self.report.events_mapped += 1
            self._outstanding_events += 1
            full = self._batcher.add(ref, event, now)
            if full is not None:
                self._submit(full)
        for rejection in result.rejected:
            self._reject(ref, str(rejection.stage), rejection.reason, rejection.mapping)
        last = result.rejected[-1] if result.rejected else None
        self._guard.observe(last is not None, f"{last.stage}: {last.reason}" if last else "")

    def _redelivered(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._rewound:
            self._rewound.add(tp)
            log.warning(
                "%s[%d]: the Kafka client delivered offset %d again (its fetch position went "
                "back); records already handled are skipped",
                tp.topic,
                tp.partition,
                offset,
            )

    def _submit(self, batch: Batch) -> None:
        self._sender.submit(batch)

    def _batches_due(self, now: float) -> None:
        if self._sender.halted:
            return  # the sender holds what it has; do not hand it more
        for batch in self._batcher.due(now):
            self._submit(batch)

    def _reject(self, ref: RecordRef, stage: str, reason: str, mapping: str | None) -> None:
        if not ref.tracker.active:
            return  # revoked: the partition's new owner handles the record again
        self.report.reject(stage)
        self._metrics.records_dead_lettered.labels(ref.source[0], stage).inc()
        if not self._mode.dead_letter:
            ref.tracker.finish(ref.offset)
            return
        if self._dead_letters is None:
            raise StopProcessing(
                f"record {ref.source[0]}[{ref.source[1]}]@{ref.source[2]} rejected at {stage} "
                f"({reason}) and no kafka.dead_letter_topic is configured"
            )
        message = ref.message
        letter = DeadLetter(
            ref.source[0], ref.source[1], ref.source[2], message.key(), message.value(),
            message_headers(message), stage, reason, mapping,
        )  # fmt: skip

        def written(error: str | None) -> None:
            # Runs inside the producer's poll(): record the failure, the loop stops on it.
            if error is not None:
                self._dead_letter_error = (
                    f"cannot write a dead letter to {self._dead_letters_topic()}: {error}"
                )
                return
            ref.tracker.finish(ref.offset)
            self._dead_letter_acked = True

        self._dead_letters.write(letter, written)

    def _dead_letters_topic(self) -> str:
        return self._dead_letters.topic if self._dead_letters is not None else "(none)"

    def _backpressure(self) -> None:
        limit = self._delivery.max_buffered_events
        halted = self._sender.halted is not None
        if not self._source.paused and (halted or self._outstanding_events >= limit):
            self._source.pause_all()
            self._metrics.paused.set(1)
        elif self._source.paused and not halted and self._outstanding_events <= limit // 2:
            self._source.resume_all()
            self._metrics.paused.set(0)

    def _commit_if_due(self, now: float) -> None:
        since = now - self._last_commit
        # A dead letter just acknowledged is committed past soon: until its offset is
        # committed, a crash writes it again on redelivery (a duplicate dead letter).
        soon = self._dead_letter_acked and since >= DEAD_LETTER_COMMIT_S
        if not soon and since * 1000 < self._delivery.commit_interval_ms:
            return
        self._dead_letter_acked = False
        self._last_commit = now
        positions = self._offsets.to_commit()
        if positions and self._source.commit(positions, asynchronous=True):
            self._offsets.mark_committed(positions)
            self._metrics.commits.inc()
        elif positions:
            self._metrics.commit_failures.inc()

    def _commit_all(self) -> None:
        """Every position, waiting for the broker's answer (stop)."""
        positions = self._offsets.positions()
        if not positions:
            return
        if self._source.commit_and_serve(positions, timeout=FINAL_COMMIT_TIMEOUT_S):
            self._offsets.mark_committed(positions)
            self._metrics.commits.inc()
            self._final_commit_done = True
        else:
            self._metrics.commit_failures.inc()
            log.warning("final offset commit not confirmed; the next owner may re-send some events")

    def _commit_failed(self, partitions: list[TopicPartition], reason: str) -> None:
        self._metrics.commit_failures.inc()
        log.warning("offset commit failed for %d partitions: %s", len(partitions), reason)
        for tp in partitions:
            tracker = self._offsets.get(tp)
            if tracker is not None:
                tracker.committed = None  # commit the position again next time

    def _gauges(self, now: float) -> None:
        if now - self._last_gauges < GAUGE_INTERVAL_S:
            return
        self._last_gauges = now
        m = self._metrics
        m.assigned_partitions.set(len(self._offsets))
        oldest = self._offsets.oldest_pending_timestamp()
        m.oldest_unfinished_age.set(0.0 if oldest is None else max(0.0, now - oldest))
        lags = self._source.lag()
        for tp, lag in lags.items():
            m.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag.lag)
        idle = self._stalls.observe(
            {tp: lag.lag for tp, lag in lags.items()},
            {tp: lag.position for tp, lag in lags.items()},
            {t.tp: t.position() for t in self._offsets},
            now,
        )
        for tp, seconds in idle.items():
            m.partition_stalled.labels(tp.topic, str(tp.partition)).set(seconds)
        if self._stalls.stalled() and not self._stall_logged:
            log.error("stall: %s", self._stalls.describe())
        self._stall_logged = bool(self._stalls.stalled())

    def _finished(self) -> bool:
        assignment = self._source.assignment
        return (
            bool(assignment)
            and assignment <= self._at_end
            and self._outstanding_events == 0
            and self._offsets.pending() == 0
        )

    # -- rebalance ------------------------------------------------------------

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        now = self._clock()
        for tp in partitions:
            self._offsets.assign(tp)
            self._stalls.assigned(tp, now)
        self._broker.answered()
        self._metrics.rebalances.labels("assigned").inc(len(partitions))
        self._metrics.assigned_partitions.set(len(self._offsets))
        log.info("partitions assigned: %s", _names(partitions), extra=_fields(partitions))

    def _revoked(self, partitions: list[TopicPartition]) -> None:
        trackers = [t for t in (self._offsets.get(tp) for tp in partitions) if t is not None]
        self._drain(lambda: all(t.pending() == 0 for t in trackers), self._drain_timeout())
        # Synchronously, even if an asynchronous commit of the same position may
        # be on its way: the next owner starts from what the broker has. (Not again
        # when leaving after a confirmed final commit.)
        positions = {
            t.tp: p
            for t in trackers
            if (p := t.position()) is not None
            and not (self._final_commit_done and p == t.committed)
        }
        if positions:
            if self._source.commit(positions, asynchronous=False):
                self._metrics.commits.inc()
            else:
                self._metrics.commit_failures.inc()
        self._forget(partitions)
        self._metrics.rebalances.labels("revoked").inc(len(partitions))
        undone = sum(t.pending() for t in trackers)
        log.info(
            "partitions revoked: %s (committed %s%s)",
            _names(partitions),
            {f"{tp.topic}[{tp.partition}]": p for tp, p in positions.items()},
            f"; {undone} records left to the next owner" if undone else "",
            extra={**_fields(partitions), "left_to_next_owner": undone},
        )

    def _lost(self, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: commit nothing, fence everything.
        self._forget(partitions)
        self._metrics.rebalances.labels("lost").inc(len(partitions))
        log.warning("partitions lost: %s", _names(partitions), extra=_fields(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._offsets.revoke(tp)
            self._stalls.forget(tp)
            self._at_end.discard(tp)
            self._metrics.forget_partition(tp.topic, tp.partition)
        dropped = self._batcher.discard(lambda ref: ref.tracker.active)
        self._outstanding_events -= len(dropped)
        self._metrics.assigned_partitions.set(len(self._offsets))

    def _drain_timeout(self) -> float:
        # A halted sender completes nothing until the token changes: waiting for it
        # would only hold up the rebalance or the stop. Leaving the group at the end of
        # a stop revokes everything once more, after the stop's own drain and with the
        # sender closed: nothing can complete any more, so it must not wait again.
        if self._sender.halted or self._closing:
            return 0.0
        return self._delivery.drain_timeout_s

    def _drain(self, done: Callable[[], bool], timeout: float, *, serve: bool = False) -> bool:
        """Flush every batch and serve completions until ``done()`` or ``timeout``.
        ``serve``: keep the consumer polled meanwhile (stop; never inside a callback)."""
        if not self._sender.halted:
            for batch in self._batcher.flush():
                self._submit(batch)
        deadline = self._clock() + timeout
        while True:
            self._collect()
            if done():
                return True
            if self._clock() >= deadline:
                return False
            if serve:
                self._source.serve(0.01)
            else:
                self._sender.wait(0.01)

    # -- stop -------------------------------------------------------------------

    def shutdown(self) -> int:
        """Drain, commit, leave the group. Returns the exit status."""
        reason = self._stop_reason
        log.info("stopping: %s", reason or "requested")
        drained = self._drain(
            lambda: (
                self._outstanding_events == 0
                and (self._dead_letters is None or self._dead_letters.outstanding == 0)
            ),
            self._delivery.drain_timeout_s,
        )
        if not drained:
            log.warning(
                "stop: %d events still outstanding after %.0fs; their records stay uncommitted",
                self._outstanding_events,
                self._delivery.drain_timeout_s,
            )
        self._commit_all()
        self._sender.close(timeout=1.0)
        self._closing = True
        self._source.close()
        log.info(
            "stopped: %d records, %d filtered, %d events accepted, rejected %s",
            self.report.records,
            self.report.filtered,
            self.report.events_accepted,
            self.report.rejected or "none",
            extra={
                "records": self.report.records,
                "filtered": self.report.filtered,
                "events_mapped": self.report.events_mapped,
                "events_accepted": self.report.events_accepted,
                "rejected": self.report.rejected,
            },
        )
        return 1 if reason else 0

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason


def _names(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "none"


def _fields(partitions: Sequence[TopicPartition]) -> dict[str, Any]:
    """Structured log fields of a rebalance (JSON keys)."""
    return {
        "topics": sorted({tp.topic for tp in partitions}),
        "partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions],
        "count": len(partitions),
    }
