"""One record's way from bytes to TikTok events: decode → route → validate input →
filter → map → validate output → age check.

:class:`Transformer` is the part of the pipeline that needs no broker and no
network, shared by ``run``, ``preview`` and ``replay-dlq`` so all three agree on
what a record becomes. It never raises on data: every problem becomes an
:class:`~processor.errors.InvalidRecord` in the result, naming stage and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from processor.config import DEFAULT_MAX_RECORD_BYTES, Config, load_config
from processor.errors import ConfigError, InvalidRecord, SchemaViolation
from processor.mapping import CompiledMapping, MappedEvent, compile_mappings
from processor.schemas import Validator, compile_file, tiktok_event_validator
from processor.types import Stage


class RecordResult(NamedTuple):
    """What one record became. Neither events nor rejections means it was filtered out.

    (A tuple: one is built per record on the hot path.)
    """

    events: tuple[MappedEvent, ...] = ()
    rejected: tuple[InvalidRecord, ...] = ()

    @property
    def filtered(self) -> bool:
        return not self.events and not self.rejected


FILTERED = RecordResult()


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """Everything a topic's records go through."""

    topic: str
    validate_input: Validator | None
    mappings: tuple[CompiledMapping, ...]


#: The name of a ``for_each`` list's element in field paths and rules.
EACH = "$each"


def derived_event_id(topic: str, partition: int, offset: int) -> str:
    """The event id of a record whose mapping names no id field: stable across redelivery."""
    return f"{topic}-{partition}-{offset}"


def _each_scope(
    mapping: CompiledMapping, record: dict[str, Any], fallback_id: str
) -> Iterator[tuple[dict[str, Any], str]]:
    """(scope, derived id) of each element of a ``for_each`` mapping's list that its rule
    matches: the element is ``$each`` beside the record's own fields, and the n-th
    element's derived id is the record's with ``-n`` appended (stable across
    redelivery, distinct per event). A record without the list has none."""
    assert mapping.for_each is not None  # noqa: S101 - the caller checks
    items = mapping.for_each(record)
    if items.__class__ is not list:
        return
    for n, item in enumerate(items):
        scope = {**record, EACH: item}
        if mapping.matches(scope):
            yield scope, f"{fallback_id}-{n}"


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class Transformer:
    """Turns a topic's record bytes into events, using compiled mappings."""

    def __init__(
        self,
        plans: Mapping[str, TopicPlan],
        *,
        validate_output: Validator,
        max_event_age_s: float,
        max_future_skew_s: float,
        clock: Callable[[], float],
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self._plans = dict(plans)
        self._max_record_bytes = max_record_bytes
        self._validate_output = validate_output
        self._max_age = max_event_age_s
        self._max_skew = max_future_skew_s
        self._clock = clock

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self._plans)

    def plan(self, topic: str) -> TopicPlan | None:
        return self._plans.get(topic)

    def transform(
        self, topic: str, partition: int, offset: int, value: bytes | None
    ) -> RecordResult:
        """Everything one record becomes. Never raises on bad data."""
        plan = self._plans.get(topic)
        if plan is None:
            return RecordResult(
                rejected=(InvalidRecord(Stage.DECODE, f"no mapping for topic {topic!r}"),)
            )
        if value is None:
            return RecordResult(
                rejected=(InvalidRecord(Stage.DECODE, "record has no value (tombstone)"),)
            )
        if len(value) > self._max_record_bytes:
            # Not even parsed: one huge record must cost neither the memory of its
            # document nor a crash when its dead letter is written.
            reason = (
                f"record value is {len(value):,} bytes, above kafka.max_record_bytes "
                f"{self._max_record_bytes:,}"
            )
            return RecordResult(rejected=(InvalidRecord(Stage.DECODE, reason),))
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return RecordResult(rejected=(InvalidRecord(Stage.DECODE, f"not JSON: {exc.msg}"),))
        if record.__class__ is not dict:
            return RecordResult(rejected=(InvalidRecord(Stage.DECODE, "not a JSON object"),))
        if plan.validate_input is not None:
            try:
                plan.validate_input(record)
            except SchemaViolation as exc:
                reason = f"{exc.path or '(record)'}: {exc.message}"
                return RecordResult(rejected=(InvalidRecord(Stage.INPUT_SCHEMA, reason),))
        return self._map(plan, record, derived_event_id(topic, partition, offset))

    def _map(self, plan: TopicPlan, record: dict[str, Any], fallback_id: str) -> RecordResult:
        events: list[MappedEvent] = []
        rejected: list[InvalidRecord] = []
        now = self._clock()
        for mapping in plan.mappings:
            if mapping.for_each is None:
                if mapping.matches(record):
                    self._map_one(mapping, record, fallback_id, now, events, rejected)
                continue
            for scope, scope_id in _each_scope(mapping, record, fallback_id):
                self._map_one(mapping, scope, scope_id, now, events, rejected)
        if not events and not rejected:
            return FILTERED
        return RecordResult(tuple(events), tuple(rejected))

    def _map_one(  # noqa: PLR0917 - the loop's state, passed on
        self,
        mapping: CompiledMapping,
        record: dict[str, Any],
        fallback_id: str,
        now: float,
        events: list[MappedEvent],
        rejected: list[InvalidRecord],
    ) -> None:
        try:
            event = mapping.map(record, fallback_id)
            self._validate_output(event.payload)
        except InvalidRecord as exc:
            rejected.append(exc)
            return
        except SchemaViolation as exc:
            reason = f"{exc.path or '(event)'}: {exc.message}"
            rejected.append(InvalidRecord(Stage.OUTPUT_SCHEMA, reason, mapping=mapping.name))
            return
        stale = self._age_problem(event.payload["event_time"], now)
        if stale is not None:
            rejected.append(InvalidRecord(Stage.STALE, stale, mapping=mapping.name))
            return
        events.append(event)

    def _age_problem(self, event_time: int, now: float) -> str | None:
        # TikTok matches nothing older than 28 days; sending it only costs quota.
        if event_time < now - self._max_age:
            return (
                f"event_time {_iso(event_time)} is older than max_event_age "
                f"{_duration(self._max_age)}"
            )
        if event_time > now + self._max_skew:
            return (
                f"event_time {_iso(event_time)} is more than max_future_skew "
                f"{_duration(self._max_skew)} in the future"
            )
        return None


def build_transformer(
    config: Config, clock: Callable[[], float]
) -> tuple[Transformer, tuple[str, ...]]:
    """Compile the configuration's mappings and input schemas. Returns the
    transformer and start-up warnings; raises ConfigError on any problem."""
    mappings, warnings = compile_mappings(config)
    schema_of: dict[str, Path | None] = {}
    by_topic: dict[str, list[CompiledMapping]] = {}
    for mapping in mappings:
        schema_of.setdefault(mapping.topic, mapping.source.schema)
        by_topic.setdefault(mapping.topic, []).append(mapping)
    validators: dict[Path, Validator] = {}
    plans: dict[str, TopicPlan] = {}
    for topic, topic_mappings in by_topic.items():
        schema = schema_of[topic]
        validator = None
        if schema is not None:
            validator = validators.get(schema) or validators.setdefault(
                schema, compile_file(schema)
            )
        plans[topic] = TopicPlan(topic, validator, tuple(topic_mappings))
    transformer = Transformer(
        plans,
        validate_output=tiktok_event_validator(),
        max_event_age_s=config.delivery.max_event_age_s,
        max_future_skew_s=config.delivery.max_future_skew_s,
        clock=clock,
        max_record_bytes=config.kafka.max_record_bytes,
    )
    return transformer, warnings


def load_pipeline(
    path: Path | str,
    *,
    clock: Callable[[], float],
    environ: Mapping[str, str] | None = None,
    require_token: bool = False,
) -> tuple[Config, Transformer, tuple[str, ...]]:
    """Load the configuration and compile it, reporting every problem of the file
    (structure, librdkafka settings and mappings) in one :class:`ConfigError`.

    ``require_token`` marks the commands that connect (``run``, ``replay-dlq``): for
    them the Kafka clients are also built, without brokers, and what librdkafka then
    refuses is a problem too. The offline commands get that as a warning instead,
    because building the clients needs what only the deployment may have (secrets
    from its environment, certificate files)."""
    # The Kafka client library is loaded only once a configuration is checked, not on import.
    from processor.kafka.settings import needs_the_deployment, settings_problems  # noqa: PLC0415

    def compiler_problems(config: Config) -> list[str]:
        try:
            compile_mappings(config)
        except ConfigError as exc:
            return list(exc.problems)
        except Exception as exc:
            # A compiler bug this file reaches: compile each mapping alone to name the
            # one that reaches it, and still report every other problem, not a traceback.
            if len(config.mappings) == 1:
                index = config.mappings[0].index
                return [
                    f"mappings[{index}]: the mapping compiler failed on it "
                    f"({type(exc).__name__}: {exc}); a bug in the processor, please report it"
                ]
            return [
                p
                for m in config.mappings
                for p in compiler_problems(replace(config, mappings=(m,)))
            ]
        return []

    def problems(config: Config) -> list[str]:
        found = settings_problems(config.kafka, build_clients=require_token)
        if config.mappings:
            found += compiler_problems(config)
        return found

    def offline_problems(config: Config) -> list[str]:
        # Refusals that the deployment's secrets and files cannot change are errors
        # offline too; the others (a password only the pod has) are warnings below.
        found = problems(config)
        if not found:
            found = [p for p in settings_problems(config.kafka) if not needs_the_deployment(p)]
        return found

    check = problems if require_token else offline_problems
    config = load_config(path, environ=environ, require_token=require_token, check=check)
    transformer, warnings = build_transformer(config, clock)
    if not require_token:
        offline = "checked without the deployment's secrets and files: `run` stops if it fails"
        warnings += tuple(
            f"{p} ({offline})" for p in settings_problems(config.kafka) if needs_the_deployment(p)
        )
    return config, transformer, warnings
