"""One consumer group member's loop: consume → transform → batch → send → collect →
commit, one turn at a time.

The loop only moves records along; what "done" means, which offset may be committed
and when, and the fencing of revoked partitions are the ledger's
(:mod:`processor.ledger`, the at-least-once contract in one screen); every rejection
goes through :mod:`processor.rejection`.

Threads: this loop owns every Kafka call (consume, pause/resume, commit, the
dead-letter producer's acknowledgements), the transform and the batching, on one
thread. Requests to TikTok run on the sender's own thread; their outcomes come back
through :meth:`BatchSender.poll_completions`, drained at the start of every turn.

- **Memory is bounded**: at most ``delivery.max_buffered_events`` events exist
  between the consumer and TikTok; above that every partition is paused (consume()
  keeps the membership alive), and resumed below half of it.
- **A halted sender** (a token or permission error) pauses consumption; nothing is
  committed past the held events; it resumes when the token is rotated. With a token
  per pixel (``tiktok.pixels``) ``halted`` means every tenant is halted; one halted
  tenant (``partly_halted``) pauses nothing: its batches are submitted and held by
  the sender while the others flow, within ``max_buffered_events`` as always.
- **On revoke** the revoked partitions' batches are flushed and their work waited
  for (up to ``drain_timeout_s``), their positions committed synchronously, and
  their ledgers fenced.
- **On stop** (SIGTERM/SIGINT): no new records, batches flushed, in-flight work
  waited for up to the drain timeout, every position committed, the group left.

Readiness (``/readyz``): no tenant halted, the brokers reachable, partitions
assigned, and none of them stalled (:mod:`processor.liveness`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from processor.batching import Batch, Batcher, PendingEvent
from processor.config import Config
from processor.dlq import DeadLetterGuard, DeadLetterWriter
from processor.errors import StopProcessing
from processor.kafka.api import Consumer, Record, TopicPartition
from processor.ledger import Ledger, PartitionLedger, Source, Ticket
from processor.liveness import StallWatch
from processor.mapping.coerce import drop_reason
from processor.metrics import HistogramTally, Metrics
from processor.rejection import Rejections
from processor.report import RunReport
from processor.transform import Transformer
from processor.types import Stage

log = logging.getLogger(__name__)

#: Records read per consume() call.
CONSUME_BATCH: Final = 500
#: How often gauges (lag, oldest unfinished, stalls) are refreshed, seconds.
GAUGE_INTERVAL_S: Final = 2.0
#: How long a stop waits for the broker to confirm the final commit, seconds.
FINAL_COMMIT_TIMEOUT_S: Final = 10.0
#: A stop takes at most ``drain_timeout_s`` plus this: the final commit, closing the
#: sender and leaving the group (the chart's grace period must allow for it).
STOP_OVERHEAD_S: Final = 15.0
#: The readiness reason of a member without partitions (``--workers`` tells it apart).
NO_PARTITIONS: Final = "no partitions assigned"

#: Gives the (topic, partition, offset) a record is transformed as, or None for a
#: record to skip; ``replay-dlq`` reads a dead letter as its source record.
Identify = Callable[[Record], Source | None]


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
    def halted(self) -> str | None:
        """Why nothing can be delivered (every tenant halted), or None."""

    @property
    def partly_halted(self) -> str | None:
        """The tenants halted while others deliver (``pixel shop-eu: 40105 …``), or None:
        their batches are still submitted (the sender holds them)."""

    @property
    def held_events(self) -> int:
        """Events a halted tenant holds: none finishes before its token changes."""

    def close(self, timeout: float) -> None: ...


class Processor:
    """One consumer group member's pipeline.

    ``dead_letters``: where rejections are written (None: no dead-letter topic; a
    rejection then stops the processor). ``replay``: ``replay-dlq`` mode, where
    rejections are only counted, ``identify`` names each record's source, and the run
    ends once every partition is read to its end and everything is done.
    """

    def __init__(
        self,
        config: Config,
        transformer: Transformer,
        metrics: Metrics,
        sender: BatchSender,
        source: Consumer,
        *,
        dead_letters: DeadLetterWriter | None = None,
        replay: bool = False,
        identify: Identify | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._delivery = config.delivery
        self._transformer = transformer
        self._metrics = metrics
        self._sender = sender
        self._source = source
        self._replay = replay
        self._identify = identify
        self._clock = clock
        self.report = RunReport()
        self._ledger = Ledger(self._delivery.commit_interval_ms / 1000)
        self._rejections = Rejections(
            self._ledger,
            DeadLetterGuard(config.dead_letter),
            metrics,
            self.report,
            dead_letters,
            dead_letter=not replay,
        )
        self._batcher = Batcher(
            max_events=self._delivery.max_batch_events, linger_s=self._delivery.linger_ms / 1000
        )
        self._stalls = StallWatch(self._delivery.stall_timeout_s)
        self._outstanding_events = 0
        self._stop_requested = False
        self._stop_reason: str | None = None
        self._last_gauges = 0.0
        self.last_loop = clock()
        self._rewound: set[TopicPartition] = set()  # partitions whose rewind was logged
        self._halt_logged: str | None = None
        self._stall_logged = False
        self._closing = False
        # Counted per turn and added to the metrics once per turn: a prometheus
        # inc() takes a lock, too dear once per record.
        self._consumed_now: dict[str, int] = {}
        self._filtered_now: dict[str, int] = {}
        self._mapped_now: dict[str, int] = {}
        self._latency = HistogramTally(metrics.end_to_end_latency)

    # -- control ------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a graceful stop (safe from a signal handler)."""
        self._stop_requested = True

    @property
    def ready(self) -> tuple[bool, str]:
        """No tenant halted, no fatal Kafka error, the brokers reachable, partitions
        assigned, and none of them stalled (for ``/readyz``). One halted pixel fails it
        too: its events wait for the operator to fix its token."""
        halted = self._sender.halted or self._sender.partly_halted
        if halted:
            return False, f"halted: {halted}"
        fatal = self._source.fatal
        if fatal:
            return False, f"fatal Kafka error: {fatal}"
        down = self._source.unreachable
        if down:
            return False, down
        if not self._source.assignment:
            return False, NO_PARTITIONS
        stalled = self._stalls.describe()
        if stalled:
            return False, f"stalled: {stalled}"
        return True, "ok"

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def run(self) -> int:
        """Process until stopped. Returns the exit status: 0 on a clean stop."""
        self.start()
        while self.turn():
            pass
        return self.shutdown()

    # -- the loop -----------------------------------------------------------------

    def start(self) -> None:
        """Start the sender and join the consumer group."""
        self._sender.start()
        self._source.subscribe(self)

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
        self._commit_due(now)
        self._backpressure()
        self._gauges(now)
        records = self._source.consume(CONSUME_BATCH, self._poll_timeout(now))
        now = self._clock()
        try:
            for record in records:
                self._handle(record, now)
        finally:  # a rejection that stops the loop leaves the turn's counts right
            self._flush_counts()
        self._rejections.check()
        fatal = self._source.fatal
        if fatal is not None:
            raise StopProcessing(f"fatal Kafka error: {fatal}")
        if self._replay and self._finished():
            self._stop_requested = True

    def _handle(self, record: Record, now: float) -> None:
        topic = record.topic
        # A plain tuple equals the TopicPartition key: no NamedTuple built per record.
        partition = self._ledger.get((topic, record.partition))
        if partition is None:  # not ours (any more): the new owner reads it
            return
        offset = record.offset
        if partition.seen(offset):
            self._redelivered(partition.tp, offset)
            return
        self._consumed_now[topic] = self._consumed_now.get(topic, 0) + 1
        self.report.records += 1
        source = (topic, record.partition, offset)
        if self._identify is not None:
            identified = self._identify(record)
            if identified is None:  # replay: a copy of a dead letter already replayed
                partition.track(offset, 0, now, record, source)
                self.report.duplicates += 1
                return
            source = identified
        result = self._transformer.transform(source[0], source[1], source[2], record.value)
        timestamp = record.timestamp or now
        events, rejected = result.events, result.rejected
        ticket = partition.track(offset, len(events) + len(rejected), timestamp, record, source)
        if ticket is None:
            self.report.filtered += 1
            self._filtered_now[topic] = self._filtered_now.get(topic, 0) + 1
            self._rejections.passed()
            return
        mapped = self._mapped_now
        for event in events:
            name = event.payload["event"]
            mapped[name] = mapped.get(name, 0) + 1
            if event.dropped:
                self._count_dropped(name, event.dropped)
            self._outstanding_events += 1
            full = self._batcher.add(ticket, event, now)
            if full is not None:
                self._sender.submit(full)
        self.report.events_mapped += len(events)
        for rejection in rejected:
            self._rejections.reject(ticket, rejection.stage, rejection.reason, rejection.mapping)
        if not rejected:
            self._rejections.passed()

    def _collect(self) -> None:
        """Hand the ledger what the sender and the dead-letter producer finished."""
        ledger, rejections = self._ledger, self._rejections
        latency = self._latency
        for outcome in self._sender.poll_completions():
            self._outstanding_events -= len(outcome.batch.items)
            now = self._clock()
            self.report.events_accepted += len(outcome.accepted)
            for item in outcome.accepted:
                ticket: Ticket = item.ref
                if ledger.accepted(ticket):
                    latency.observe(max(0.0, now - ticket.timestamp))
            for item, reason in outcome.rejected:
                rejections.reject(item.ref, Stage.API, reason, item.mapping)
        latency.flush()
        rejections.poll()
        self._metrics.buffered_events.set(self._outstanding_events)
        halted = self._sender.halted
        if halted and not self._halt_logged:
            log.error("delivery halted, consumption paused, nothing committed past it: %s", halted)
        # The sender logs what ends a halt or prolongs it, as only it knows which: a new
        # token tried, refused too ("still halted"), or accepted ("delivery resumed").
        self._halt_logged = halted

    def _count_dropped(self, event: str, dropped: Sequence[tuple[str, str]]) -> None:
        for field, reason in dropped:
            self._metrics.identifiers_dropped.labels(event, field, drop_reason(reason)).inc()

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
        if self._outstanding_events or self._rejections.outstanding:
            due = self._batcher.next_due()
            return 0.01 if due is None else max(0.0, min(0.05, due - now))
        return 0.2

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

    def _batches_due(self, now: float) -> None:
        if self._sender.halted:
            return  # the sender holds what it has; do not hand it more
        for batch in self._batcher.due(now):
            self._sender.submit(batch)

    def _backpressure(self) -> None:
        limit = self._delivery.max_buffered_events
        halted = self._sender.halted is not None
        source = self._source
        if not source.paused and (halted or self._outstanding_events >= limit):
            source.pause_all()
            self._metrics.paused.set(1)
        elif source.paused and not halted and self._outstanding_events <= limit // 2:
            source.resume_all()
            self._metrics.paused.set(0)

    # -- commits --------------------------------------------------------------------

    def _commit_due(self, now: float) -> None:
        positions = self._ledger.due(now)
        if not positions:
            return
        if self._source.commit(positions, asynchronous=True):
            self._ledger.committed(positions)
            self._metrics.commits.inc()
        else:
            self._metrics.commit_failures.inc()

    def _commit_all(self) -> None:
        """Every position, waiting for the broker's answer (stop)."""
        positions = self._ledger.positions()
        if not positions:
            return
        if self._source.commit_and_serve(positions, timeout=FINAL_COMMIT_TIMEOUT_S):
            self._ledger.committed(positions, confirmed=True)
            self._metrics.commits.inc()
        else:
            self._metrics.commit_failures.inc()
            log.warning("final offset commit not confirmed; the next owner may re-send some events")

    def on_commit_failed(self, partitions: list[TopicPartition], reason: str) -> None:
        self._metrics.commit_failures.inc()
        log.warning("offset commit failed for %d partitions: %s", len(partitions), reason)
        self._ledger.commit_failed(partitions)

    # -- gauges ---------------------------------------------------------------------

    def _gauges(self, now: float) -> None:
        if now - self._last_gauges < GAUGE_INTERVAL_S:
            return
        self._last_gauges = now
        m = self._metrics
        m.assigned_partitions.set(len(self._ledger))
        oldest = self._ledger.oldest_pending_timestamp()
        m.oldest_unfinished_age.set(0.0 if oldest is None else max(0.0, now - oldest))
        lags = self._source.lag()
        for tp, lag in lags.items():
            m.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag.lag)
        idle = self._stalls.observe(
            {tp: lag.lag for tp, lag in lags.items()},
            {tp: lag.position for tp, lag in lags.items()},
            {p.tp: p.position() for p in self._ledger},
            now,
        )
        for tp, seconds in idle.items():
            m.partition_stalled.labels(tp.topic, str(tp.partition)).set(seconds)
        if self._stalls.stalled() and not self._stall_logged:
            log.error("stall: %s", self._stalls.describe())
        self._stall_logged = bool(self._stalls.stalled())

    def _finished(self) -> bool:
        return (
            self._source.reached_end()
            and self._outstanding_events == 0
            and self._ledger.pending() == 0
        )

    # -- rebalance (RebalanceListener; called inside consume(), on this thread) -------

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        now = self._clock()
        for tp in partitions:
            self._ledger.assign(tp)
            self._stalls.assigned(tp, now)
        self._metrics.rebalances.labels("assigned").inc(len(partitions))
        self._metrics.assigned_partitions.set(len(self._ledger))
        log.info("partitions assigned: %s", _names(partitions), extra=_fields(partitions))

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        ledgers = [p for p in (self._ledger.get(tp) for tp in partitions) if p is not None]
        self._drain(lambda: all(p.pending() == 0 for p in ledgers), self._drain_timeout())
        # Synchronously, even if an asynchronous commit of the same position may be on
        # its way: the next owner starts from what the broker has.
        positions = self._ledger.handover(ledgers)
        if positions:
            if self._source.commit(positions, asynchronous=False):
                self._metrics.commits.inc()
            else:
                self._metrics.commit_failures.inc()
        self._forget(partitions)
        self._metrics.rebalances.labels("revoked").inc(len(partitions))
        undone = sum(p.pending() for p in ledgers)
        log.info(
            "partitions revoked: %s (committed %s%s)",
            _names(partitions),
            {f"{tp.topic}[{tp.partition}]": p for tp, p in positions.items()},
            f"; {undone} records left to the next owner" if undone else "",
            extra={**_fields(partitions), "left_to_next_owner": undone},
        )

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: commit nothing, fence everything.
        self._forget(partitions)
        self._metrics.rebalances.labels("lost").inc(len(partitions))
        log.warning("partitions lost: %s", _names(partitions), extra=_fields(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        fenced: list[PartitionLedger] = []
        for tp in partitions:
            ledger = self._ledger.fence(tp)
            if ledger is not None:
                fenced.append(ledger)
            self._stalls.forget(tp)
            self._metrics.forget_partition(tp.topic, tp.partition)
        if fenced:
            dropped = self._batcher.discard(self._ledger.live)
            self._outstanding_events -= len(dropped)
        self._metrics.assigned_partitions.set(len(self._ledger))

    def _drain_timeout(self) -> float:
        # A halted sender completes nothing until the token changes: waiting for it
        # would only hold up the rebalance or the stop. Leaving the group at the end of
        # a stop revokes everything once more, after the stop's own drain and with the
        # sender closed: nothing can complete any more, so it must not wait again.
        if self._sender.halted or self._closing:
            return 0.0
        return self._delivery.drain_timeout_s

    def _drain(self, done: Callable[[], bool], timeout: float) -> bool:
        """Flush every batch and serve completions until ``done()`` or ``timeout``."""
        if not self._sender.halted:
            for batch in self._batcher.flush():
                self._sender.submit(batch)
        deadline = self._clock() + timeout
        while True:
            self._collect()
            if done():
                return True
            if self._clock() >= deadline or self._only_held_left():
                return False
            self._sender.wait(0.01)

    def _only_held_left(self) -> bool:
        """Everything still out is held by a halted pixel: no wait can finish it (a
        revoke or a stop must not hold the group up for the drain timeout)."""
        held = self._sender.held_events
        return held > 0 and self._outstanding_events <= held

    # -- stop -----------------------------------------------------------------------

    def shutdown(self) -> int:
        """Drain, commit, leave the group. Returns the exit status."""
        reason = self._stop_reason
        log.info("stopping: %s", reason or "requested")
        drained = self._drain(
            lambda: self._outstanding_events == 0 and self._rejections.outstanding == 0,
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
        report = self.report
        log.info(
            "stopped: %d records, %d filtered, %d events accepted, rejected %s",
            report.records,
            report.filtered,
            report.events_accepted,
            report.rejected or "none",
            extra={
                "records": report.records,
                "filtered": report.filtered,
                "events_mapped": report.events_mapped,
                "events_accepted": report.events_accepted,
                "rejected": report.rejected,
            },
        )
        return 1 if reason else 0


def _names(partitions: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "none"


def _fields(partitions: Sequence[TopicPartition]) -> dict[str, Any]:
    """Structured log fields of a rebalance (JSON keys)."""
    return {
        "topics": sorted({tp.topic for tp in partitions}),
        "partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions],
        "count": len(partitions),
    }
