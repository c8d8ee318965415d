"""Small Kafka client helpers shared by tests and scripts, built on confluent_kafka.

Topics: `admin_client`, `create_topic`, `wait_for_topic`, `delete_topics`, and `TopicFactory`,
which creates uniquely named topics (`unique_name`) and deletes them again. Records:
`produce` (acknowledged by all in-sync replicas, or an error), `consume` (exactly n records,
optionally as a group member that commits), `consume_all` (a topic up to its end) and
`committed_offsets` of a group. Consumed records are copied into `Record` values.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

# The documented home of NewTopic, which the package's type stubs do not re-export explicitly.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from devkit.kafka.errors import KafkaDevError

Key: TypeAlias = str | bytes | None
Value: TypeAlias = str | bytes | None
Headers: TypeAlias = list[tuple[str, str | bytes | None]]
#: (key, value) or (key, value, headers), as `produce` takes them.
ProduceRecord: TypeAlias = tuple[Key, Value] | tuple[Key, Value, Headers]


@dataclass(frozen=True)
class Record:
    """A consumed record, copied out of the client's Message so it outlives the consumer."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # In record order; names may repeat.
    timestamp_ms: int

    @classmethod
    def from_message(cls, message: Message) -> Record:
        raw_headers = message.headers() or []
        pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
        return cls(
            topic=message.topic() or "",
            partition=_int(message.partition()),
            offset=_int(message.offset()),
            key=message.key(),
            value=message.value(),
            headers=tuple(
                (name, value.encode() if isinstance(value, str) else value) for name, value in pairs
            ),
            timestamp_ms=message.timestamp()[1],
        )


@dataclass(frozen=True)
class PartitionState:
    """Leader and replicas of one partition, as the cluster metadata reports them."""

    partition: int
    leader: int  # Node id; -1 while the partition has no leader.
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def unique_name(prefix: str = "test") -> str:
    """A fresh topic or group name: `prefix` (made name-safe, shortened) plus a random suffix."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.")[:80] or "test"
    return f"{safe}-{uuid.uuid4().hex[:12]}"


def admin_client(bootstrap: str, **config: Any) -> AdminClient:
    """An AdminClient for `bootstrap`. Keep a reference while waiting on its futures: a
    collected client never completes them.
    """
    return AdminClient({"bootstrap.servers": bootstrap, **config})


def create_topic(
    bootstrap: str,
    name: str,
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    config: Mapping[str, str | int] | None = None,
    timeout: float = 30.0,
    client_config: Mapping[str, Any] | None = None,
) -> str:
    """Create topic `name` and wait until every partition has a leader; return the name.

    `config` is the topic's configuration; `client_config` the admin client's settings (e.g. a
    SASL cluster's `KafkaCluster.client_config`).
    """
    deadline = time.monotonic() + timeout
    admin = admin_client(bootstrap, **(client_config or {}))
    new_topic = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config={key: str(value) for key, value in (config or {}).items()},
    )
    futures = admin.create_topics([new_topic], operation_timeout=timeout, request_timeout=timeout)
    futures[name].result(timeout=timeout)
    wait_for_topic(
        bootstrap,
        name,
        partitions=partitions,
        timeout=max(1.0, deadline - time.monotonic()),
        admin=admin,
    )
    return name


def wait_for_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int | None = None,
    full_isr: bool = False,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
    client_config: Mapping[str, Any] | None = None,
) -> dict[int, PartitionState]:
    """Wait until `topic` has `partitions` partitions (any number if None), each with a leader
    (and, with `full_isr`, every replica in sync); return the partitions' state by id.

    `client_config` configures the admin client made when `admin` is not given.
    """
    if admin is None:  # Not `admin or …`: a client with no queued requests has len() 0.
        admin = admin_client(bootstrap, **(client_config or {}))
    deadline = time.monotonic() + timeout
    state = "no metadata yet"
    while True:
        try:
            # Metadata for all topics, not list_topics(topic): asking for one topic by name may
            # auto-create it on a broker with auto.create.topics.enable.
            metadata = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException as exc:
            state = str(exc)
        else:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                state = f"topic not listed ({found.error if found else 'absent'})"
            else:
                parts = {
                    p.id: PartitionState(p.id, p.leader, tuple(p.replicas), tuple(p.isrs))
                    for p in found.partitions.values()
                    if p.error is None
                }
                ready = (
                    bool(parts)
                    and len(parts) == len(found.partitions)
                    and (partitions is None or len(parts) == partitions)
                    and all(
                        part.leader >= 0 and (not full_isr or set(part.isr) >= set(part.replicas))
                        for part in parts.values()
                    )
                )
                if ready:
                    return parts
                state = ", ".join(str(part) for part in parts.values()) or "no partitions yet"
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not ready after {timeout:.0f} s: {state}")
        time.sleep(0.1)


def delete_topics(
    bootstrap: str,
    topics: Sequence[str],
    timeout: float = 10.0,
    *,
    client_config: Mapping[str, Any] | None = None,
) -> None:
    """Delete `topics`, best effort: cleanup must not fail a test that passed."""
    if not topics:
        return
    # Must outlive the futures: they die with the client.
    admin = admin_client(bootstrap, **(client_config or {}))
    futures = admin.delete_topics(list(topics), operation_timeout=timeout, request_timeout=timeout)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=timeout)


class TopicFactory:
    """Creates uniquely named topics on one broker or cluster and deletes them in `cleanup()`.

    Calling it like `new_topic(partitions=3, replication_factor=1, config={...})` returns the
    name of a topic that exists with a leader for every partition. `client_config` configures
    its admin clients (e.g. a SASL cluster's `KafkaCluster.client_config`).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        prefix: str = "test",
        replication_factor: int = 1,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.replication_factor = replication_factor
        self.client_config = dict(client_config or {})
        self.created: list[str] = []

    def __call__(
        self,
        partitions: int = 1,
        replication_factor: int | None = None,
        config: Mapping[str, str | int] | None = None,
        *,
        name: str | None = None,
    ) -> str:
        topic = name or unique_name(self.prefix)
        create_topic(
            self.bootstrap,
            topic,
            partitions=partitions,
            replication_factor=replication_factor or self.replication_factor,
            config=config,
            client_config=self.client_config,
        )
        self.created.append(topic)
        return topic

    def cleanup(self) -> None:
        created, self.created = self.created, []
        delete_topics(self.bootstrap, created, client_config=self.client_config)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[ProduceRecord],
    *,
    partition: int | None = None,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[tuple[int, int]]:
    """Produce `records` in order and wait until each is acknowledged (acks=all, idempotent).

    Returns the (partition, offset) of every record, in input order. Raises KafkaDevError if any
    record fails or is not acknowledged within `timeout`: a test's input must never be left
    half-written without anyone noticing. `config` overrides producer settings.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            **(config or {}),
        }
    )
    delivered: list[tuple[int, int] | None] = []
    failures: list[str] = []

    def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(f"record {index}: {error}")
            else:
                delivered[index] = (_int(message.partition()), _int(message.offset()))

        return report

    for index, record in enumerate(records):
        key, value = record[0], record[1]
        headers = record[2] if len(record) == 3 else None
        delivered.append(None)
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    partition=-1 if partition is None else partition,
                    headers=headers,
                    on_delivery=on_delivery(index),
                )
                break
            except BufferError:
                producer.poll(0.1)  # Local queue full: serve deliveries, then retry.
        producer.poll(0)
    remaining = producer.flush(timeout)
    if failures:
        raise KafkaDevError(
            f"{len(failures)} of {len(delivered)} records to {topic} failed: {failures[:5]}"
        )
    acknowledged = [result for result in delivered if result is not None]
    if remaining or len(acknowledged) != len(delivered):
        raise KafkaDevError(
            f"only {len(acknowledged)} of {len(delivered)} records to {topic} were acknowledged "
            f"within {timeout:.0f} s"
        )
    return acknowledged


def consume(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    group_id: str | None = None,
    commit: bool = False,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> list[Record]:
    """Read exactly `count` records from `topic` and return them in the order received.

    Without `group_id` the reader assigns itself every partition from the beginning (no group,
    no rebalance to wait for): the quickest way to see what a topic holds. With `group_id` it
    subscribes as a member of that group and starts from the group's committed offsets
    (earliest when none); `commit=True` then commits, synchronously, the position just after the
    last record returned. `config` overrides consumer settings (e.g. group.protocol=consumer).
    Raises TimeoutError when fewer than `count` records arrive within `timeout`.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id or unique_name("devkit-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **(config or {}),
        }
    )
    records: list[Record] = []
    try:
        if group_id is None:
            partitions = _partition_ids(consumer, topic, timeout)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        else:
            consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if message is None:
                continue
            _raise_for(message)
            records.append(Record.from_message(message))
        if commit and records:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    if len(records) < count:
        raise TimeoutError(
            f"read {len(records)} of {count} records from {topic} in {timeout:.0f} s"
        )
    return records


def consume_all(
    bootstrap: str, topic: str, *, config: Mapping[str, Any] | None = None, timeout: float = 60.0
) -> list[Record]:
    """Read `topic` from the beginning up to its end as of the call; no group, no commit."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("devkit-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # End-of-partition events mark where each partition's fetch position reached the
            # log end, control records of transactions included.
            "enable.partition.eof": True,
            **(config or {}),
        }
    )
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        ends: dict[int, int] = {}
        for p in _partition_ids(consumer, topic, timeout):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {len(records)} records from {topic} but partitions {sorted(pending)} "
                    f"did not reach their end offsets {ends} in {timeout:.0f} s"
                )
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                if _int(message.offset()) >= ends[_int(message.partition())]:
                    pending.discard(_int(message.partition()))
                continue
            _raise_for(message)
            records.append(Record.from_message(message))
    finally:
        consumer.close()
    return records


def committed_offsets(
    bootstrap: str,
    group_id: str,
    topic: str,
    *,
    timeout: float = 10.0,
    config: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """The offsets `group_id` has committed for `topic`, as {partition: next offset to read}.

    Partitions without a commit are absent. `config` overrides admin client settings.
    """
    request = [ConsumerGroupTopicPartitions(group_id)]
    # Must outlive the future: it dies with the client.
    admin = admin_client(bootstrap, **(config or {}))
    futures = admin.list_consumer_group_offsets(request, request_timeout=timeout)
    result = futures[group_id].result(timeout=timeout)
    offsets: dict[int, int] = {}
    for tp in result.topic_partitions or []:
        if tp.topic != topic:
            continue
        if tp.error is not None:
            raise KafkaException(tp.error)
        if tp.offset >= 0:
            offsets[tp.partition] = tp.offset
    return offsets


def _partition_ids(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise KafkaDevError(f"topic {topic} not found ({found.error if found else 'absent'})")
    return sorted(found.partitions)


def _raise_for(message: Message) -> None:
    error = message.error()
    if error is not None:
        raise KafkaException(error)


def _int(value: int | None) -> int:
    if value is None:
        raise KafkaDevError("the Kafka client returned a message without partition or offset")
    return value
