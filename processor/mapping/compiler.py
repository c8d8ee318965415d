"""Compiling topic mappings into plain callables, and running one on a record.

:func:`compile_mappings` turns the mappings of a :class:`~processor.config.Config`
into :class:`CompiledMapping` objects, reporting every problem with its path
(``mappings[2].fields.user.emial: unknown field; did you mean user.email?``).
:meth:`CompiledMapping.map` is pure: a decoded record in, one TikTok event out,
or :class:`~processor.errors.InvalidRecord` naming the field. No clock, no I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, NoReturn

from orjson import JSONEncodeError, dumps

from processor.config import Config, MappingConfig
from processor.errors import ConfigError, InvalidRecord
from processor.mapping.codegen import FieldSpec, Source, generate_fill
from processor.mapping.coerce import (
    CONTENT_FIELDS,
    HASHED_USER_FIELDS,
    SECTION_FIELDS,
    CoerceError,
    Coercer,
    pii_coercers,
    to_bool,
    to_epoch_seconds,
    to_id,
)
from processor.mapping.paths import Getter, PathError, compile_path, parse_path
from processor.mapping.rules import Predicate, compile_rule
from processor.mapping.values import compile_value, describe, is_present
from processor.matchkeys import match_keys
from processor.types import Stage

#: TikTok's web standard events (2025).
STANDARD_EVENTS: Final = frozenset(
    {
        "AddPaymentInfo", "AddToCart", "AddToWishlist", "ApplicationApproval",
        "CompleteRegistration", "Contact", "CustomizeProduct", "Download", "FindLocation",
        "InitiateCheckout", "Lead", "Purchase", "Schedule", "Search", "StartTrial",
        "SubmitApplication", "Subscribe", "ViewContent",
    }
)  # fmt: skip
#: Soft-deprecated on 1 May 2025, accepted until 2027.
LEGACY_EVENTS: Final = frozenset({"ClickButton", "PlaceAnOrder"})
#: Renamed; TikTok converts the old name.
RENAMED_EVENTS: Final = {"SubmitForm": "Lead", "CompletePayment": "Purchase"}

_SECTIONS: Final = ("user", "page", "properties", "lead")
_CONTENTS: Final = "properties.contents"


def encode(payload: dict[str, Any]) -> bytes:
    """``payload`` as compact JSON bytes. (orjson's own result keeps its 4 kB working
    buffer allocated: a copy holds only the JSON, a tenth of that, for as long as the
    event waits for TikTok.)"""
    return memoryview(dumps(payload)).tobytes()


class MappedEvent(NamedTuple):
    """One TikTok event made from one record by one mapping, ready to batch.

    ``payload`` is the ``data[]`` entry and ``data`` the same as JSON, encoded once
    when the event is made (a batch waits for TikTok holding only these bytes);
    ``event_source`` (web, app, offline, crm), ``event_source_id`` (its pixel code, app
    id or event set id) and ``test_event_code`` choose the request it may share with
    other events. (A tuple: built once per event on the hot path, where a frozen
    dataclass costs four times as much.) :meth:`of` builds one from a payload.
    """

    mapping: str
    event_source: str
    event_source_id: str
    test_event_code: str | None
    payload: dict[str, Any]
    data: bytes
    #: (field, reason) of each customer-information value left out (see
    #: ``on_invalid_identifier``).
    dropped: tuple[tuple[str, str], ...] = ()
    #: The match keys of its ``user`` object (:func:`processor.matchkeys.match_keys`).
    match_keys: int = 0

    @property
    def event(self) -> str:
        return str(self.payload["event"])

    @classmethod
    def of(  # noqa: PLR0917 - the fields, in their order
        cls,
        mapping: str,
        event_source: str,
        event_source_id: str,
        test_event_code: str | None,
        payload: dict[str, Any],
        dropped: tuple[tuple[str, str], ...] = (),
    ) -> MappedEvent:
        """The event of ``payload``, encoded (raises ``orjson.JSONEncodeError`` for a
        payload that is not JSON)."""
        data = encode(payload)
        keys = match_keys(payload.get("user"))
        return cls(
            mapping, event_source, event_source_id, test_event_code, payload, data, dropped, keys
        )


class _TimeField(NamedTuple):
    label: str
    get: Getter


class _ContentsError(Exception):
    def __init__(self, label: str, message: str) -> None:
        self.label = label
        self.message = message


class CompiledMapping:
    """A topic mapping compiled for the hot path."""

    __slots__ = (
        "_event_id_of",
        "_event_time",
        "_fill",
        "_limited_data_use",
        "event_name",
        "event_source",
        "event_source_id",
        "for_each",
        "hashed_fields",
        "matches",
        "name",
        "source",
        "test_event_code",
        "topic",
    )

    def __init__(
        self,
        *,
        source: MappingConfig,
        event_source: str,
        event_source_id: str,
        test_event_code: str | None,
        matches: Predicate,
        event_time: _TimeField,
        event_id_of: Getter | None,
        sections: tuple[tuple[str, tuple[FieldSpec, ...]], ...],
        limited_data_use: bool | None,
        for_each: Getter | None = None,
    ) -> None:
        self.source = source
        self.name = source.name
        self.topic = source.topic
        self.event_name = source.event
        self.event_source = event_source
        self.event_source_id = event_source_id
        self.test_event_code = test_event_code
        self.matches = matches
        self._event_time = event_time
        self._event_id_of = event_id_of
        #: The list whose elements are each an event (``$each``), or None: one per record.
        self.for_each = for_each
        self._fill = generate_fill(sections, self._fail, name="fill_" + _identifier(source.name))
        self._limited_data_use = limited_data_use
        self.hashed_fields = tuple(
            f"user.{f.key}"
            for name, fields in sections
            if name == "user"
            for f in fields
            if f.key in HASHED_USER_FIELDS
        )

    def _reject(self, label: str, message: str) -> InvalidRecord:
        return InvalidRecord(Stage.MAPPING, f"{label}: {message}", mapping=self.name)

    def _fail(self, label: str, error: CoerceError) -> NoReturn:
        raise self._reject(label, str(error)) from None

    def map(self, record: dict[str, Any], fallback_event_id: str) -> MappedEvent:
        """Build the event for ``record``. ``fallback_event_id`` (derived from topic,
        partition and offset) is used when the mapping names no id field or the
        record lacks it, so a redelivered record always gets the same id."""
        time_field = self._event_time
        try:
            raw_time = time_field.get(record)
            if not is_present(raw_time):
                raise self._reject(time_field.label, "missing")
            event_time = to_epoch_seconds(raw_time)
        except CoerceError as exc:
            raise self._reject(time_field.label, str(exc)) from None
        event_id = fallback_event_id
        if self._event_id_of is not None:
            raw_id = self._event_id_of(record)
            if is_present(raw_id):
                try:
                    event_id = to_id(raw_id)
                except CoerceError as exc:
                    raise self._reject("event_id", str(exc)) from None
        payload: dict[str, Any] = {
            "event": self.event_name,
            "event_time": event_time,
            "event_id": event_id,
        }
        dropped: list[tuple[str, str]] = []
        try:
            self._fill(record, payload, dropped)
        except _ContentsError as exc:
            raise self._reject(exc.label, exc.message) from None
        if self._limited_data_use is not None:
            payload["limited_data_use"] = self._limited_data_use
        try:
            data = encode(payload)
        except JSONEncodeError as exc:  # a value no JSON can hold (an integer past 64 bits)
            raise self._reject("(event)", f"cannot be encoded as JSON: {exc}") from None
        return MappedEvent(
            self.name,
            self.event_source,
            self.event_source_id,
            self.test_event_code,
            payload,
            data,
            tuple(dropped),
            match_keys(payload.get("user")),
        )


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _suggest(target: str, known: list[str]) -> str:
    close = difflib.get_close_matches(target, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _known_targets() -> list[str]:
    known = ["event_time", "limited_data_use", _CONTENTS]
    known += [f"user.{k}" for k in HASHED_USER_FIELDS]
    known += [f"{s}.{k}" for s, fields in SECTION_FIELDS.items() for k in fields]
    known += [f"{_CONTENTS}[0].{k}" for k in CONTENT_FIELDS]
    return known


def _content_builder(
    item_fields: Mapping[str, Any], where: str, problems: list[str], label: str
) -> Callable[[Any], dict[str, Any] | None] | None:
    """A function building one ``contents[]`` item from a record (or a line item)."""
    compiled: list[tuple[str, str, Getter, Coercer]] = []
    for key, spec in item_fields.items():
        coerce = CONTENT_FIELDS.get(key)
        if coerce is None:
            problems.append(
                f"{where}.{key}: not a content field{_suggest(key, list(CONTENT_FIELDS))}"
            )
            continue
        get = compile_value(spec, f"{where}.{key}", problems)
        if get is not None:
            compiled.append((key, f"{label}.{key} (from {describe(spec)})", get, coerce))
    if len(compiled) != len(item_fields):
        return None
    plan = tuple(compiled)

    def build(source: Any) -> dict[str, Any] | None:
        item: dict[str, Any] = {}
        for key, field_label, get, coerce in plan:
            try:
                value = get(source)
                if value is None or value == "":
                    continue
                item[key] = coerce(value)
            except CoerceError as exc:
                raise _ContentsError(field_label, str(exc)) from None
        return item or None

    return build


def _kind(value: Any) -> str:
    return {dict: "an object", str: "text", bool: "a boolean"}.get(type(value), "a number")


def _each_contents(
    spec: Mapping[str, Any], where: str, problems: list[str], *, droppable: bool
) -> FieldSpec | None:
    try:
        items_of = compile_path(spec["each"])
    except PathError as exc:
        problems.append(f"{where}.each: {exc}")
        return None
    build = _content_builder(spec["fields"], f"{where}.fields", problems, f"{_CONTENTS}[]")
    if build is None:
        return None

    def contents(record: Any) -> list[dict[str, Any]] | None:
        items = items_of(record)
        if items is None:
            return None
        if not isinstance(items, list):
            # An object or a string where line items belong: say so, never go silent.
            raise CoerceError(f"{spec['each']}: expected a list of line items, got {_kind(items)}")
        built = [build(item) for item in items]
        return [b for b in built if b is not None] or None

    label = f"{_CONTENTS} (from each of {spec['each']})"
    return FieldSpec(
        "contents", label, (contents,), _identity, target=_CONTENTS, droppable=droppable
    )


def _identity(value: Any) -> Any:
    return value


def _event_name_warning(where: str, event: str, source: str = "web") -> str | None:
    if source == "crm":
        return None  # a CRM event set takes custom event names (its funnel's stages)
    if event in RENAMED_EVENTS:
        return (
            f"{where}.event: {event} was renamed {RENAMED_EVENTS[event]}; "
            "TikTok converts it, but new mappings should use the new name"
        )
    if event in LEGACY_EVENTS:
        return (
            f"{where}.event: {event} is a legacy TikTok event (soft-deprecated May 2025, "
            "supported until 2027)"
        )
    if event not in STANDARD_EVENTS:
        return (
            f"{where}.event: {event} is a custom event: usable for reporting and audiences, "
            "not for optimisation"
        )
    return None


@dataclass
class _FieldPlan:
    """What a mapping's ``fields`` compile into."""

    sections: dict[str, list[FieldSpec]]
    event_time: _TimeField | None = None
    limited_data_use: bool | None = None


def _single_content(
    item_fields: Mapping[str, Any], where: str, problems: list[str]
) -> tuple[FieldSpec, ...]:
    """The fields of a one-product ``contents[0]``, for generated code."""
    children: list[FieldSpec] = []
    for key, spec in item_fields.items():
        coerce = CONTENT_FIELDS.get(key)
        if coerce is None:
            hint = _suggest(key, list(CONTENT_FIELDS))
            problems.append(f"{where}.{key}: not a content field{hint}")
            continue
        get = compile_value(spec, f"{where}.{key}", problems)
        if get is not None:
            label = f"{_CONTENTS}[0].{key} (from {describe(spec)})"
            children.append(FieldSpec(key, label, _sources(spec, get), coerce))
    return tuple(children) if len(children) == len(item_fields) else ()


def _compile_fields(
    m: MappingConfig, where: str, hashed: Mapping[str, Coercer], problems: list[str]
) -> _FieldPlan:
    plan = _FieldPlan({s: [] for s in _SECTIONS}, limited_data_use=m.limited_data_use)
    drop = m.on_invalid_identifier == "drop"
    single_content: dict[str, Any] = {}
    for target, spec in m.fields.items():
        fwhere = f"{where}.fields.{target}"
        if target.startswith(f"{_CONTENTS}[0]."):
            single_content[target[len(_CONTENTS) + 4 :]] = spec
        elif target == _CONTENTS:
            _add_each_contents(plan, spec, fwhere, problems, droppable=drop)
        elif target == "limited_data_use":
            _set_limited_data_use(plan, spec, fwhere, problems)
        else:
            _add_field(plan, target, spec, fwhere, hashed=hashed, drop=drop, problems=problems)
    if single_content:
        if any(f.key == "contents" for f in plan.sections["properties"]):
            problems.append(f"{where}.fields: {_CONTENTS} is given twice")
        else:
            children = _single_content(single_content, f"{where}.fields.{_CONTENTS}[0]", problems)
            if children:
                plan.sections["properties"].append(
                    FieldSpec("contents", f"{_CONTENTS}[0]", (), _identity, children)
                )
    return plan


def _add_each_contents(
    plan: _FieldPlan, spec: Any, where: str, problems: list[str], *, droppable: bool
) -> None:
    if not (isinstance(spec, Mapping) and "each" in spec and "fields" in spec):
        problems.append(
            f"{where}: use {{each: PATH, fields: {{…}}}} for line items, "
            f"or {_CONTENTS}[0].content_id etc. for one product"
        )
        return
    field = _each_contents(spec, where, problems, droppable=droppable)
    if field is not None:
        plan.sections["properties"].append(field)


def _set_limited_data_use(plan: _FieldPlan, spec: Any, where: str, problems: list[str]) -> None:
    if not (isinstance(spec, Mapping) and "const" in spec):
        problems.append(f"{where}: limited_data_use takes {{const: true|false}}")
        return
    try:
        plan.limited_data_use = to_bool(spec["const"])
    except CoerceError as exc:
        problems.append(f"{where}: {exc}")


def _add_field(
    plan: _FieldPlan,
    target: str,
    spec: Any,
    where: str,
    *,
    hashed: Mapping[str, Coercer],
    drop: bool,
    problems: list[str],
) -> None:
    """``drop``: a customer-information (``user.*``) value that cannot be coerced is left
    out of the event and reported, not a rejection of the event."""
    if isinstance(spec, Mapping) and "each" in spec:
        problems.append(f"{where}: each is only for {_CONTENTS}")
        return
    label = f"{target} (from {describe(spec)})"
    if target == "event_time":
        get = compile_value(spec, where, problems)
        if get is not None:
            plan.event_time = _TimeField(label, get)
        return
    section, _, key = target.partition(".")
    coerce = (hashed.get(key) if section == "user" else None) or SECTION_FIELDS.get(
        section, {}
    ).get(key)
    if coerce is None or "." in key:
        problems.append(f"{where}: unknown TikTok field{_suggest(target, _known_targets())}")
        return
    get = compile_value(spec, where, problems)
    if get is not None:
        droppable = drop and section == "user"
        field = FieldSpec(
            key, label, _sources(spec, get), coerce, target=target, droppable=droppable
        )
        plan.sections[section].append(field)


def _sources(spec: Any, get: Getter) -> tuple[Source, ...]:
    """Plain dotted paths, alone or in ``{first: […]}``, become inlinable sources;
    anything else is read by its compiled getter."""
    plain = _plain_path(spec)
    if plain is not None:
        return (plain,)
    if isinstance(spec, Mapping) and set(spec) == {"first"} and isinstance(spec["first"], list):
        options: list[Source] = []
        for option in spec["first"]:
            path = _plain_path(option)
            if path is None:
                holder: list[str] = []
                option_get = compile_value(option, "", holder)
                if option_get is None:
                    return (get,)
                options.append(option_get)
            else:
                options.append(path)
        return tuple(options)
    return (get,)


def _plain_path(spec: Any) -> tuple[str, ...] | None:
    """The parts of a plain dotted path (no indices), which generated code inlines."""
    path = spec if isinstance(spec, str) else None
    if isinstance(spec, Mapping) and set(spec) == {"path"}:
        path = spec["path"]
    if not isinstance(path, str):
        return None
    try:
        parts = parse_path(path)
    except PathError:
        return None
    return parts if all(isinstance(p, str) for p in parts) else None  # type: ignore[return-value]


def _compile_one(
    index: int, m: MappingConfig, config: Config, problems: list[str], warnings: list[str]
) -> CompiledMapping | None:
    where = f"mappings[{index}]"
    before = len(problems)
    warning = _event_name_warning(where, m.event, m.event_source)
    if warning is not None:
        warnings.append(warning)
    matches: Predicate | None = _every_record
    if m.when is not None:
        matches = compile_rule(m.when, f"{where}.when", problems)
    event_id_of = None
    if m.event_id is not None:
        try:
            event_id_of = compile_path(m.event_id)
        except PathError as exc:
            problems.append(f"{where}.event_id: {exc}")
    for_each = None
    if m.for_each is not None:
        try:
            for_each = compile_path(m.for_each)
        except PathError as exc:
            problems.append(f"{where}.for_each: {exc}")
    hashed = pii_coercers(config.pii.default_phone_region)
    plan = _compile_fields(m, where, hashed, problems)
    if plan.event_time is None and not any(
        p.startswith(f"{where}.fields.event_time") for p in problems
    ):
        problems.append(f"{where}.fields.event_time: required")
    if len(problems) > before or matches is None or plan.event_time is None:
        return None
    return CompiledMapping(
        source=m,
        # Only a web mapping may leave its id out: tiktok.pixel_code is the default pixel.
        event_source=m.event_source,
        event_source_id=m.event_source_id or config.tiktok.pixel_code,
        test_event_code=m.test_event_code or config.tiktok.test_event_code,
        matches=matches,
        event_time=plan.event_time,
        event_id_of=event_id_of,
        sections=tuple((s, tuple(fs)) for s, fs in plan.sections.items() if fs),
        limited_data_use=plan.limited_data_use,
        for_each=for_each,
    )


def _every_record(record: Any) -> bool:
    return True


def compile_mappings(config: Config) -> tuple[tuple[CompiledMapping, ...], tuple[str, ...]]:
    """Compile every mapping. Returns the mappings and start-up warnings; raises
    :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    warnings: list[str] = []
    compiled = [_compile_one(m.index, m, config, problems, warnings) for m in config.mappings]
    if problems:
        raise ConfigError(problems)
    return tuple(c for c in compiled if c is not None), tuple(warnings)
