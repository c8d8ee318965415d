"""librdkafka settings of the processor's clients, and checking them offline.

The processor's consumer and producer settings are built here (pass-through
``kafka.settings`` win); :func:`settings_problems` finds what librdkafka refuses
in them without connecting to anything, for ``check-config`` and start-up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from processor.config import KafkaConfig

#: The consumer's pre-fetch queue, kB (``queued.max.messages.kbytes``), and the most one
#: fetch response may hold (``fetch.max.bytes``; a first record larger than that still
#: comes through); ``kafka.settings`` may set others.
PREFETCH_KBYTES: Final = 16_384
FETCH_MAX_BYTES: Final = 8 * 1024 * 1024
#: How long librdkafka postpones a partition's next fetch once that queue is full, ms
#: (``fetch.queue.backoff.ms``, librdkafka's default 1000).
FETCH_QUEUE_BACKOFF_MS: Final = 20


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
        # librdkafka pre-fetches up to 64 MB by default, in fetch responses of up to
        # 50 MB; at 16 MB in responses of up to 8 MB a member that resumes still has
        # several turns' worth of records queued, for a fraction of the memory (a pause
        # drops the queue, so this is the peak after a resume). Measured through a 60 s
        # outage with 1,000,000 records waiting, peak RSS: 211 MB with a 50 MB fetch,
        # 171 MB with 8 MB.
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
        "fetch.max.bytes": FETCH_MAX_BYTES,
        # Once the queue holds 16 MB, librdkafka fetches nothing more for a second by
        # default, and a loop that empties it sooner waits in consume() for the rest.
        # Measured (300,000 records, one worker, interleaved runs): consume() calls that
        # came back short fell from 85-219 to 21-29 of some 650, and records/s rose 13 %
        # (median of three: 33,600 to 38,100), CPU per record within the noise.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
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
