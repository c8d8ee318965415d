"""The consumer group member on a real Kafka cluster: :class:`KafkaSource`.

One :class:`KafkaSource` is one member of the consumer group, implementing
:class:`processor.kafka.api.Consumer`. Offsets are never committed
automatically: the loop commits the contiguous done watermark itself (see
:mod:`processor.ledger`). With the classic protocol the member uses the
cooperative-sticky assignor, so a rebalance only moves the partitions that must
move (KIP-429); with ``group.protocol=consumer`` (KIP-848, Kafka >= 4.0) the
broker drives incremental assignment. Either way the rebalance callbacks run on
the poll thread, inside :meth:`KafkaSource.consume`.

librdkafka's messages become :class:`processor.kafka.api.Record` here, its
errors are read here (:class:`BrokerHealth`), and nothing of ``confluent_kafka``
leaves this package. Not thread-safe: owned by the poll thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KafkaTopicPartition

from processor.config import KafkaConfig
from processor.errors import KafkaClientError
from processor.kafka.api import PartitionLag, RebalanceListener, Record, TopicPartition
from processor.kafka.settings import consumer_settings
from processor.logs import librdkafka_logger
from processor.metrics import Metrics

log = logging.getLogger(__name__)

#: How often the log end of every assigned partition is asked of the broker, seconds.
LAG_PROBE_INTERVAL_S = 10.0
#: How often librdkafka reports statistics, ms: how an outage is seen to end.
STATS_INTERVAL_MS = 5000

__all__ = ["BrokerHealth", "KafkaSource", "LagProbe"]


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


class LagProbe:
    """Asks the broker where assigned partitions' logs end, and where the group's
    committed offsets (or the logs' starts) are, on a thread of its own, so the poll
    thread never waits for the answers: :meth:`ask` hands over the partitions,
    :meth:`answers` reads what has arrived.

    It asks through a consumer of its own that never joins the group (the member's
    consumer blocks when another thread queries it while it consumes), with the
    member's connection settings and group id (for the committed offsets). An admin
    client would need no thread, but librdkafka 2.16 aborts the process when a broker
    goes away while its list-offsets requests are pending.
    """

    def __init__(self, kafka: KafkaConfig, *, timeout_s: float = 5.0) -> None:
        settings = consumer_settings(kafka)
        settings["client.id"] = f"{kafka.client_id}-lag"
        self._consumer = Consumer(settings, logger=librdkafka_logger())
        self._timeout_s = timeout_s
        self._ends: dict[TopicPartition, int] = {}
        self._starts: dict[TopicPartition, int] = {}
        self._wanted: list[KafkaTopicPartition] | None = None
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kafka-lag-probe", daemon=True)
        self._thread.start()

    def ask(self, partitions: list[KafkaTopicPartition]) -> None:
        """Start a round of questions about ``partitions`` (replacing one not started)."""
        with self._wake:
            self._wanted = list(partitions)
            self._wake.notify()

    def answers(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """(log ends, starting positions) known so far; never blocks."""
        return self._ends, self._starts

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._wanted is None and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                wanted, self._wanted = self._wanted, None
            try:
                self._probe(wanted or [])
            except Exception as exc:  # an unanswered question only leaves the old answers
                log.debug("lag probe: %s", exc)

    def _probe(self, partitions: list[KafkaTopicPartition]) -> None:
        ends: dict[TopicPartition, int] = {}
        starts: dict[TopicPartition, int] = {}
        for p in partitions:
            if self._stopped:
                return
            try:
                low, high = self._consumer.get_watermark_offsets(
                    p, timeout=self._timeout_s, cached=False
                )
            except KafkaException:
                continue
            if high >= 0:
                ends[_tp(p)] = high
            if low >= 0:
                starts[_tp(p)] = low
        try:
            committed = self._consumer.committed(partitions, timeout=self._timeout_s)
        except KafkaException:
            committed = []
        for p in committed:
            if p.error is None and p.offset >= 0:
                starts[_tp(p)] = p.offset  # the group's offset wins over the log start
        # Replaced whole, never changed in place: the poll thread reads them.
        self._ends = {**self._ends, **ends}
        self._starts = {**self._starts, **starts}

    def close(self) -> None:
        """Stop asking (before the consumer is closed)."""
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(self._timeout_s * 2)
        self._consumer.close()  # never subscribed: leaves no group, commits nothing


def _tp(p: KafkaTopicPartition) -> TopicPartition:
    return TopicPartition(p.topic, p.partition)


def _seconds(message: Message) -> float | None:
    kind, stamp = message.timestamp()
    return stamp / 1000.0 if kind and stamp > 0 else None


def _ours(partitions: Sequence[KafkaTopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in partitions]


class KafkaSource:
    """A consumer group member reading ``topics`` (a :class:`processor.kafka.api.Consumer`).

    ``report_end``: note when each assigned partition is read to its end, for
    :meth:`reached_end` (``replay-dlq`` stops there).
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: Sequence[str],
        metrics: Metrics,
        *,
        report_end: bool = False,
    ) -> None:
        self._topics = list(topics)
        self._listener: RebalanceListener | None = None
        self._health = BrokerHealth(metrics)
        extra = self._health.settings()
        if report_end:
            extra["enable.partition.eof"] = True
        self._report_end = report_end
        self._at_end: set[TopicPartition] = set()
        settings = consumer_settings(kafka, extra=extra)
        settings["on_commit"] = self._committed
        self._consumer = Consumer(settings, logger=librdkafka_logger())
        self._assigned: set[TopicPartition] = set()
        self._paused = False
        self._commit_results = 0
        self._last_commit_ok = True
        self._probe = LagProbe(kafka)
        self._probe_at = -LAG_PROBE_INTERVAL_S

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def unreachable(self) -> str | None:
        return self._health.down

    @property
    def fatal(self) -> str | None:
        return self._health.fatal

    def subscribe(self, listener: RebalanceListener) -> None:
        self._listener = listener
        self._consumer.subscribe(
            self._topics,
            on_assign=self._assigned_cb,
            on_revoke=self._revoked_cb,
            on_lost=self._lost_cb,
        )

    def _tell(self) -> RebalanceListener:
        if self._listener is None:  # librdkafka calls back only after subscribe()
            raise KafkaClientError("a rebalance callback before subscribe()")
        return self._listener

    # Rebalance callbacks: librdkafka calls them from consume(), on this thread.
    #
    # The pause state of every assigned partition is the member's: all paused while
    # ``paused``, none otherwise. librdkafka keeps a partition's pause flag across a
    # revoke and a later re-assignment, and a pause set before the partition is assigned
    # does not hold; so the callback assigns the partitions itself and then sets their
    # state explicitly, and a revoke resumes what it gives up. (A partition paused in
    # librdkafka that the member believes is flowing is a stall no signal shows.)
    def _assigned_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._assigned.update(tps)
        self._at_end.difference_update(tps)
        self._health.answered()
        self._tell().on_assigned(tps)
        if not partitions:
            return
        self._assign(partitions)
        if self._paused:
            self._consumer.pause(partitions)
        else:
            self._consumer.resume(partitions)

    def _assign(self, partitions: list[KafkaTopicPartition]) -> None:
        try:
            self._consumer.incremental_assign(partitions)
        except KafkaException:
            # An eager assignor set through kafka.settings: the list is the whole assignment.
            self._consumer.assign(partitions)

    def _revoked_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._tell().on_revoked(tps)
        self._give_up(partitions, tps)

    def _lost_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._tell().on_lost(tps)
        self._give_up(partitions, tps)

    def _give_up(self, partitions: list[KafkaTopicPartition], tps: list[TopicPartition]) -> None:
        self._assigned.difference_update(tps)
        self._at_end.difference_update(tps)
        if self._paused and partitions:
            self._consumer.resume(partitions)  # leave no pause behind for a later assignment

    def _committed(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        self._commit_results += 1
        self._last_commit_ok = error is None and not failed
        if (error is not None or failed) and self._listener is not None:
            reason = str(error) if error is not None else str(failed[0].error)
            self._listener.on_commit_failed(_ours(failed or partitions), reason)

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        """Up to ``max_records`` records. A client error in the batch is logged (a fatal
        one is kept in :attr:`fatal`); a partition's end is noted with ``report_end``."""
        messages = self._consumer.consume(num_messages=max_records, timeout=timeout)
        if not messages:
            return []
        if self._health.down is not None:
            self._health.answered()
        # A record without an error has its topic, partition and offset, and its headers
        # are (str, bytes | None) pairs: the client's stubs allow what produce() accepts.
        records = [
            Record(
                m.topic(),  # type: ignore[arg-type]
                m.partition(),  # type: ignore[arg-type]
                m.offset(),  # type: ignore[arg-type]
                m.value(),
                m.key(),
                m.headers(),  # type: ignore[arg-type]
                _seconds(m),
            )
            for m in messages
            if m.error() is None
        ]
        if len(records) < len(messages) or self._report_end:
            self._read_errors_and_ends(messages)
        return records

    def _read_errors_and_ends(self, messages: list[Message]) -> None:
        for message in messages:
            error = message.error()
            tp = TopicPartition(str(message.topic()), int(message.partition() or 0))
            if error is None:
                self._at_end.discard(tp)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._at_end.add(tp)
            elif error.fatal():
                self._health.fatal = error.str()
            else:
                log.warning("consumer error: %s", error, extra={"code": error.name()})

    def reached_end(self) -> bool:
        return bool(self._assigned) and self._assigned <= self._at_end

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause_all(self) -> None:
        """Stop fetching on every assigned partition (and on those assigned later, until
        :meth:`resume_all`); consume() keeps the membership alive."""
        self._paused = True
        targets = self._kafka_assignment()
        if targets:
            self._consumer.pause(targets)

    def resume_all(self) -> None:
        """Fetch again on every assigned partition, whatever librdkafka remembered."""
        self._paused = False
        targets = self._kafka_assignment()
        if targets:
            self._consumer.resume(targets)

    def _kafka_assignment(self) -> list[KafkaTopicPartition]:
        return [KafkaTopicPartition(tp.topic, tp.partition) for tp in self._assigned]

    def commit(self, positions: Mapping[TopicPartition, int], *, asynchronous: bool) -> bool:
        """Commit ``positions`` (the next offset to read per partition)."""
        if not positions:
            return True
        offsets = [
            KafkaTopicPartition(tp.topic, tp.partition, pos) for tp, pos in positions.items()
        ]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return True
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            # Nothing to commit is not a failure: the broker already has it.
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                return True
            log.warning("offset commit failed: %s", error)
            return False
        return all(p.error is None for p in result or [])

    def commit_and_serve(self, positions: Mapping[TopicPartition, int], timeout: float) -> bool:
        """Commit asynchronously and keep serving the consumer until the broker answers.

        For the final commit of a stop: a synchronous commit made while a rebalance is
        pending blocks until the session times out, because nobody polls; polling here
        lets the group protocol (and its callbacks) go on. Records fetched meanwhile are
        dropped unprocessed: they are past the committed positions, so nothing is lost.
        """
        if not positions:
            return True
        before = self._commit_results
        if not self.commit(positions, asynchronous=True):
            return False
        deadline = time.monotonic() + timeout
        while self._commit_results == before and time.monotonic() < deadline:
            self._consumer.consume(num_messages=100, timeout=0.05)
        return self._commit_results > before and self._last_commit_ok

    def lag(self) -> dict[TopicPartition, PartitionLag]:
        """Every assigned partition's lag: the log end minus the next offset to read.

        The log end is the newer of the watermark cached from fetch responses (no broker
        call) and the one :class:`LagProbe` last asked of the broker, every
        ``LAG_PROBE_INTERVAL_S``: a partition that fetches nothing (paused, or stuck)
        gets no fetch responses, and its lag must grow exactly then. A partition with no
        fetch position yet counts from the group's committed offset, else the log start.
        """
        out: dict[TopicPartition, PartitionLag] = {}
        tps = self._kafka_assignment()
        if not tps:
            return out
        now = time.monotonic()
        if now - self._probe_at >= LAG_PROBE_INTERVAL_S:
            self._probe_at = now
            self._probe.ask(tps)
        try:
            positions = self._consumer.position(tps)
        except KafkaException:
            return out
        ends, starts = self._probe.answers()
        for p in positions:
            tp = TopicPartition(p.topic, p.partition)
            try:
                _low, cached = self._consumer.get_watermark_offsets(p, cached=True)
            except KafkaException:
                cached = -1
            high = max(cached, ends.get(tp, -1))
            position = p.offset if p.offset >= 0 else starts.get(tp, -1)
            if high >= 0 and position >= 0:
                out[tp] = PartitionLag(max(0, high - position), position)
        return out

    def close(self) -> None:
        """Leave the group (runs the revoke callback for what is still assigned)."""
        self._probe.close()
        self._consumer.close()
