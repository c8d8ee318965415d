"""The Kafka side: the consumer group member and the dead-letter producer.

One :class:`Source` is one member of the consumer group. Offsets are never
committed automatically: the pipeline commits the contiguous done watermark
itself (see :mod:`processor.offsets`). With the classic protocol the member uses
the cooperative-sticky assignor, so a rebalance only moves the partitions that
must move (KIP-429); with ``group.protocol=consumer`` (KIP-848, Kafka ≥ 4.0) the
broker drives incremental assignment. Either way the rebalance callbacks run on
the poll thread, inside :meth:`Source.consume`, and confluent-kafka performs the
incremental assign/unassign after they return.

Only this module imports ``confluent_kafka``. Not thread-safe: owned by the
poll thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition

from processor.config import KafkaConfig
from processor.errors import DeadLetterWriteError
from processor.logs import librdkafka_logger
from processor.offsets import TopicPartition

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[list[TopicPartition]], None]

#: How often the log end of every assigned partition is asked of the broker, seconds.
LAG_PROBE_INTERVAL_S = 10.0

__all__ = ["KafkaError", "Message", "Source", "dead_letter_producer", "message_headers"]


def consumer_settings(
    kafka: KafkaConfig, *, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """librdkafka settings of a processor consumer (pass-through settings win)."""
    settings: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group_id,
        "client.id": kafka.client_id,
        # Offsets are committed by the pipeline, only once records are done.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "group.protocol": kafka.group_protocol,
    }
    if kafka.group_protocol == "classic":
        settings["partition.assignment.strategy"] = "cooperative-sticky"
        # A crashed member's partitions move after 10 s, not librdkafka's 45 s; a member
        # that leaves in the middle of a join holds the group up for this long too.
        settings["session.timeout.ms"] = 10_000
    settings.update(kafka.librdkafka_settings())
    settings.update(extra or {})
    return settings


def producer_settings(kafka: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings of the dead-letter producer (pass-through settings win)."""
    settings: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": f"{kafka.client_id}-dlq",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
    }
    settings.update(kafka.librdkafka_settings())
    return settings


def dead_letter_producer(kafka: KafkaConfig) -> Producer:
    """An idempotent producer with acks=all: a dead letter is acknowledged only once
    it is replicated, and retries never duplicate it."""
    # Its librdkafka lines go through logging too (JSON lines stay JSON lines).
    return Producer(producer_settings(kafka), logger=librdkafka_logger())


#: A property librdkafka does not know, set after the one being checked: the client
#: then fails on it while its configuration is still being set, before any thread,
#: socket or file is opened, which tells that the property before it was accepted.
_PROBE: Final = "tiktok.events.settings.probe"
#: Both names of the brokers to connect to (the second is librdkafka's alias).
_BROKER_SETTINGS: Final = ("bootstrap.servers", "metadata.broker.list")
_PROPERTY_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")


def settings_problems(kafka: KafkaConfig, *, build_clients: bool = True) -> list[str]:
    """What librdkafka refuses in ``kafka.settings``, as ``kafka.settings.<name>: <its
    reason>``, found without connecting to anything.

    Each property is first set on its own (unknown names, invalid values: nothing is
    built). Then, with ``build_clients`` and every property accepted, the processor's
    consumer and (with a dead-letter topic) its producer are built from their real
    settings without brokers and closed at once, which finds what librdkafka checks
    only when a client is created: combinations (``session.timeout.ms`` with
    ``group.protocol=consumer``, ``acks`` with idempotence), SASL credentials,
    certificate files. That takes a few milliseconds (tens with TLS), and reads the
    files the settings name as the real clients would (an OIDC or Kerberos setup
    also starts its token refresh).
    """
    problems: list[str] = []
    for name, value in kafka.librdkafka_settings().items():
        where = f"kafka.settings.{name}"
        if "\0" in name or "\0" in value:
            # librdkafka reads C strings: "a\0b" would silently be "a".
            problems.append(f"{where}: contains a NUL character")
        elif name == "group.id" and not value.strip():
            problems.append(f"{where}: must not be blank")
        else:
            reason = _refusal(Producer, {name: value, _PROBE: "1"})
            if reason is not None and _PROBE not in reason:
                problems.append(f"{where}: {reason}")
    if problems or not build_clients:
        return problems
    quiet = logging.Logger(f"{__name__}.settings")
    quiet.addHandler(logging.NullHandler())  # a client without brokers warns about it
    consumer = _without_brokers(consumer_settings(kafka))
    # A blank group.id makes confluent-kafka abort the process (an assertion in the
    # client); the configuration reports it as kafka.group_id.
    if str(consumer.get("group.id", "")).strip():
        reason = _refusal(lambda s: Consumer(s, logger=quiet).close(), consumer)
        if reason is not None:
            problems.append(_attributed(kafka, reason, "the Kafka consumer"))
    if kafka.dead_letter_topic:
        producer = _without_brokers(producer_settings(kafka))
        # Dropped at once: destroying a producer with nothing queued returns immediately.
        reason = _refusal(lambda s: Producer(s, logger=quiet), producer)
        said = [p.split(": librdkafka cannot build ", 1)[-1].split(": ", 1)[-1] for p in problems]
        if reason is not None and _detail(reason) not in said:  # once, not per client
            problems.append(_attributed(kafka, reason, "the dead-letter producer"))
    return problems


def _without_brokers(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _BROKER_SETTINGS}


def _refusal(build: Callable[[dict[str, Any]], object], settings: dict[str, Any]) -> str | None:
    """librdkafka's reason for not building a client from ``settings`` (``build`` builds
    it and closes it); None if it was built."""
    try:
        build(settings)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        text = error.str() if isinstance(error, KafkaError) else str(exc)
        return " ".join(text.split())
    except (TypeError, ValueError) as exc:  # confluent-kafka's own checks (callbacks, types)
        return " ".join(str(exc).split())
    return None


#: librdkafka refusals that name no property, and the property they are about.
_UNNAMED_PROPERTIES: Final = (("SASL mechanism", "sasl.mechanism"),)

#: Refusals that depend on what only the deployment has (its secrets and files): an
#: offline check warns of them instead of failing.
_DEPLOYMENT_ONLY: Final = re.compile(
    r"password|username|credential|secret|token|keytab|kinit|oauth|oidc|"
    r"\.location|\.pem|certificate|x509|No such file|file",
    re.IGNORECASE,
)


def _detail(reason: str) -> str:
    return re.sub(r"^Failed to create (consumer|producer): ", "", reason)


def _attributed(kafka: KafkaConfig, reason: str, client: str) -> str:
    """``reason`` under the first pass-through property it names (librdkafka names the
    property it objects to, mostly), else under ``kafka.settings``."""
    detail = _detail(reason)
    names = set(kafka.settings)
    named = next((n for n in _PROPERTY_NAME.findall(detail) if n in names), None)
    if named is None:
        named = next(
            (prop for phrase, prop in _UNNAMED_PROPERTIES if phrase in detail and prop in names),
            None,
        )
    where = f"kafka.settings.{named}" if named else "kafka.settings"
    return f"{where}: librdkafka cannot build {client}: {detail}"


def needs_the_deployment(problem: str) -> bool:
    """Whether a problem of :func:`settings_problems` may come from what an offline check
    lacks (secrets from the deployment's environment, certificate files) rather than
    from the settings themselves."""
    return _DEPLOYMENT_ONLY.search(problem) is not None


#: Broker and producer codes that refuse a message for its size: a smaller one may pass.
_SIZE_ERRORS: Final = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD}
)


def _write_error(error: KafkaError) -> DeadLetterWriteError:
    return DeadLetterWriteError(
        f"{error.name()}: {error.str()}", too_large=error.code() in _SIZE_ERRORS
    )


class DeadLetterProducer:
    """The dead-letter producer with librdkafka's errors in the project's own terms
    (:class:`processor.dlq.Producer`): ``BufferError`` while the queue is full,
    :class:`DeadLetterWriteError` for a letter it cannot queue or the broker refused."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Callable[[DeadLetterWriteError | None], None],
    ) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            on_delivery(None if error is None else _write_error(error))

        wire: list[tuple[str, str | bytes | None]] = list(headers)
        try:
            self._producer.produce(topic, value=value, key=key, headers=wire, on_delivery=delivered)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError):
                raise _write_error(error) from exc
            raise DeadLetterWriteError(str(exc)) from exc

    def poll(self, timeout: float = 0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for outstanding letters; how many are left."""
        return self._producer.flush(timeout)


class PartitionLag(NamedTuple):
    """Records behind on one partition, and the offset they are counted from."""

    lag: int
    position: int


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


def message_headers(message: Message) -> list[tuple[str, bytes | None]]:
    """A message's headers as a list of (name, bytes) pairs."""
    raw = message.headers()
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


def _ours(partitions: Sequence[KafkaTopicPartition]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.partition) for p in partitions]


class Source:
    """A consumer group member reading ``topics``."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: Sequence[str],
        *,
        on_assign: PartitionsCallback,
        on_revoke: PartitionsCallback,
        on_lost: PartitionsCallback,
        on_commit_failed: Callable[[list[TopicPartition], str], None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self._topics = list(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._on_commit_failed = on_commit_failed
        settings = consumer_settings(kafka, extra=extra)
        settings["on_commit"] = self._committed
        self._consumer = Consumer(settings, logger=librdkafka_logger())
        self._assigned: set[TopicPartition] = set()
        self.paused = False
        self._commit_results = 0
        self._last_commit_ok = True
        self._probe = LagProbe(kafka)
        self._probe_at = -LAG_PROBE_INTERVAL_S

    def subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics,
            on_assign=self._assigned_cb,
            on_revoke=self._revoked_cb,
            on_lost=self._lost_cb,
        )

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
        self._on_assign(tps)
        if not partitions:
            return
        self._assign(partitions)
        if self.paused:
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
        self._on_revoke(tps)
        self._give_up(partitions, tps)

    def _lost_cb(self, _consumer: Any, partitions: list[KafkaTopicPartition]) -> None:
        tps = _ours(partitions)
        self._on_lost(tps)
        self._give_up(partitions, tps)

    def _give_up(self, partitions: list[KafkaTopicPartition], tps: list[TopicPartition]) -> None:
        self._assigned.difference_update(tps)
        if self.paused and partitions:
            self._consumer.resume(partitions)  # leave no pause behind for a later assignment

    def _committed(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        failed = [p for p in partitions if p.error is not None]
        self._commit_results += 1
        self._last_commit_ok = error is None and not failed
        if (error is not None or failed) and self._on_commit_failed is not None:
            reason = str(error) if error is not None else str(failed[0].error)
            self._on_commit_failed(_ours(failed or partitions), reason)

    def consume(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` messages (errors included: check ``message.error()``)."""
        return self._consumer.consume(num_messages=max_records, timeout=timeout)

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause_all(self) -> None:
        """Stop fetching on every assigned partition (and on those assigned later, until
        :meth:`resume_all`); consume() keeps the membership alive."""
        self.paused = True
        targets = self._kafka_assignment()
        if targets:
            self._consumer.pause(targets)

    def resume_all(self) -> None:
        """Fetch again on every assigned partition, whatever librdkafka remembered."""
        self.paused = False
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

    def serve(self, timeout: float) -> None:
        """Poll without processing (rebalance and commit callbacks run); fetched records
        are dropped. Only while stopping, with every partition paused."""
        self._consumer.consume(num_messages=100, timeout=timeout)

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
