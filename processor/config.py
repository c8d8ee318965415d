"""The configuration: one YAML file plus environment overrides → frozen objects.

This module is the only place that reads the environment. Loading validates the
file against ``schemas/config.schema.json`` and then checks what a schema cannot
(files exist, names are unique, a topic has one input schema), and reports every
problem at once as ``path: message`` in a :class:`~processor.errors.ConfigError`.

Secrets (the TikTok access tokens, librdkafka passwords) are held in
:class:`Secret`, whose ``repr`` and ``str`` never show the value. A token is
never read from the YAML file itself: it comes from an environment variable or
a file, and the file is re-read after a token error so rotation needs no restart.
TikTok issues a token per pixel, so ``tiktok.pixels`` may give an event source id a
token of its own (:class:`PixelToken`); every other id uses the default token.

The file is read by :mod:`processor.safeyaml` within bounds (size, nesting, the
number of values with aliases expanded; no duplicate keys), and no input makes
loading raise anything but :class:`~processor.errors.ConfigError`: a path that
cannot be checked, an environment value that is not text or a URL that does not
parse is a problem like any other, and every problem is one line.

Environment overrides (applied before validation, so they are validated too):

=============================  ===================================
``KAFKA_BOOTSTRAP_SERVERS``    ``kafka.bootstrap_servers``
``KAFKA_GROUP_ID``             ``kafka.group_id``
``KAFKA_DEAD_LETTER_TOPIC``    ``kafka.dead_letter_topic``
``KAFKA_SETTING_<NAME>``       ``kafka.settings.<name>`` (``_`` → ``.``, lower case)
``TIKTOK_ENDPOINT``            ``tiktok.endpoint``
``TIKTOK_TEST_EVENT_CODE``     ``tiktok.test_event_code``
``TIKTOK_ACCESS_TOKEN_FILE``   ``tiktok.access_token_file``
``METRICS_PORT``               ``metrics.port``
=============================  ===================================
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jsonschema_rs

from processor.errors import ConfigError
from processor.presets import expand as expand_preset
from processor.safeyaml import read_yaml_file
from processor.schemas import (
    MASK,
    SCHEMAS_DIR,
    SourceRules,
    format_path,
    load_schema,
    source_rules,
)

DEFAULT_ENDPOINT: Final = "https://business-api.tiktok.com/open_api/v1.3/event/track/"
DEFAULT_TOKEN_ENV: Final = "TIKTOK_ACCESS_TOKEN"  # noqa: S105 - a variable name, not a token
#: The tenant name of the default token (``tiktok.access_token_*``): the ``pixel`` label of
#: every event source id that ``tiktok.pixels`` does not list.
DEFAULT_TENANT: Final = "default"
CONFIG_SCHEMA: Final = "config.schema.json"
#: librdkafka's default message.max.bytes: a larger record is dead-lettered unparsed.
DEFAULT_MAX_RECORD_BYTES: Final = 1_000_000
#: What a mapping's ``event_source_id`` is, for each ``event_source``.
SOURCE_ID_NAMES: Final = {
    "web": "pixel code",
    "app": "TikTok app id",
    "offline": "offline event set id",
    "crm": "CRM event set id",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SECRET_SETTING = re.compile(r"password|secret|token|key\.pem|credentials", re.IGNORECASE)
#: A token is a few dozen characters; a larger file is not a token (and /dev/zero never ends).
MAX_TOKEN_FILE_BYTES: Final = 64 * 1024
#: Longer problems keep their start (the path) and end (the message), so one enormous
#: key or value cannot turn the error report into a megabyte.
MAX_PROBLEM_CHARS: Final = 400
# Everything that could break a problem line or a terminal: C0/C1 controls and the
# characters str.splitlines() treats as line ends.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_NETLOC = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]@]+))(?::(?P<port>[0-9]{1,5}))?$"
)


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is sent (a request header, librdkafka)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """Where the TikTok access token comes from.

    ``file`` wins over the environment when both are set, because a mounted
    secret file can be rotated without a restart.
    """

    env_name: str
    env_value: Secret | None
    file: Path | None

    def source(self) -> str:
        """Where the token is read from, for people (never the token)."""
        if self.file is not None:
            return f"file {self.file}"
        state = "set" if self.env_value else "not set"
        return f"environment variable {self.env_name} ({state})"

    def current(self) -> Secret | None:
        """The token now: the file's content (re-read on every call) or the env value.
        None when the file cannot be read as a token (missing, not UTF-8, too large)."""
        if self.file is not None:
            try:
                text = _read_token_file(self.file)
            except (OSError, ValueError):
                return None
            return Secret(text) if text else None
        return self.env_value


def _read_token_file(path: Path) -> str:
    """The token text of ``path``. Raises OSError, or ValueError when it is larger than
    :data:`MAX_TOKEN_FILE_BYTES` or not UTF-8 (UnicodeDecodeError)."""
    with path.open("rb") as file:
        data = file.read(MAX_TOKEN_FILE_BYTES + 1)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ValueError(f"larger than {MAX_TOKEN_FILE_BYTES // 1024} KiB")
    return data.decode("utf-8").strip()


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str
    group_id: str
    client_id: str = "tiktok-events"
    dead_letter_topic: str | None = None
    group_protocol: str = "classic"
    #: A record whose value is larger is dead-lettered unparsed (stage decode).
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    # Values whose names look secret are wrapped in Secret.
    settings: Mapping[str, str | Secret] = field(default_factory=dict)

    def librdkafka_settings(self) -> dict[str, str]:
        """The pass-through settings with secrets revealed, for the client constructors only."""
        return {k: v.reveal() if isinstance(v, Secret) else v for k, v in self.settings.items()}


@dataclass(frozen=True, slots=True)
class PixelToken:
    """A tenant: the event source id (pixel code or event set id) whose requests carry a
    token of their own, and the ``name`` it goes by in metrics and readiness."""

    name: str
    event_source_id: str
    access_token: AccessToken


@dataclass(frozen=True, slots=True)
class TikTokConfig:
    pixel_code: str
    access_token: AccessToken
    endpoint: str = DEFAULT_ENDPOINT
    test_event_code: str | None = None
    partner_name: str | None = None
    #: Tenants with a token of their own; every other event source id uses ``access_token``.
    pixels: tuple[PixelToken, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    max_batch_events: int = 1000
    linger_ms: int = 200
    max_in_flight: int = 8
    max_buffered_events: int = 20_000
    max_requests_per_s: float = 15.0
    # None: retry until delivered (an outage pauses consumption; nothing is dead-lettered).
    max_retries: int | None = None
    backoff_initial_ms: int = 200
    backoff_max_ms: int = 30_000
    request_timeout_s: float = 10.0
    max_event_age_s: float = 28 * 86400.0
    max_future_skew_s: float = 3600.0
    commit_interval_ms: int = 1000
    drain_timeout_s: float = 30.0
    #: A partition with lag and no progress for this long fails /readyz (a stall).
    stall_timeout_s: float = 120.0


#: Original headers a dead letter never copies, unless the configuration says otherwise:
#: a producer may have put credentials in them, and the dead-letter topic is read by more
#: people than the source topic.
DEFAULT_DENIED_HEADERS: Final = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "*token*",
    "*secret*",
    "*password*",
    "*api-key*",
    "*apikey*",
    "*credential*",
)


@dataclass(frozen=True, slots=True)
class DeadLetterConfig:
    max_ratio: float = 0.5
    window: int = 1000
    max_consecutive: int = 1000
    #: A dead letter (key, value, headers) is made to fit this; librdkafka's default
    #: message.max.bytes, below the broker's default max.message.bytes.
    max_message_bytes: int = 1_000_000
    #: Shell-style patterns (case-insensitive) of original header names to copy.
    allow_headers: tuple[str, ...] = ("*",)
    deny_headers: tuple[str, ...] = DEFAULT_DENIED_HEADERS


@dataclass(frozen=True, slots=True)
class PiiConfig:
    default_phone_region: str | None = None


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    host: str = "0.0.0.0"  # noqa: S104 - metrics must be scrapeable from outside the pod
    port: int = 9464


@dataclass(frozen=True, slots=True)
class MappingConfig:
    """One topic mapping as written; :mod:`processor.mapping` compiles it."""

    name: str
    topic: str
    event: str
    fields: Mapping[str, Any]
    schema: Path | None = None
    schema_name: str | None = None
    when: Mapping[str, Any] | None = None
    event_id: str | None = None
    #: One event per element of this list of the record (``$each`` in paths).
    for_each: str | None = None
    #: TikTok's event_source: web, app, offline or crm.
    event_source: str = "web"
    #: The pixel code, app id or event set id; None for a web mapping that takes
    #: ``tiktok.pixel_code`` (``pixel_code`` in the file is this field, for web).
    event_source_id: str | None = None
    test_event_code: str | None = None
    limited_data_use: bool | None = None
    #: A customer-information value that cannot be normalised: left out of the event
    #: and counted (``drop``), or the whole event rejected (``reject``).
    on_invalid_identifier: str = "drop"
    #: The preset this mapping was expanded from (``processor/presets``).
    preset: str | None = None
    index: int = 0  # position in the file, for messages: mappings[index]


@dataclass(frozen=True, slots=True)
class Config:
    kafka: KafkaConfig
    tiktok: TikTokConfig
    mappings: tuple[MappingConfig, ...]
    delivery: DeliveryConfig = DeliveryConfig()
    dead_letter: DeadLetterConfig = DeadLetterConfig()
    pii: PiiConfig = PiiConfig()
    metrics: MetricsConfig = MetricsConfig()
    source: Path | None = None

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics consumed, in the order mappings name them."""
        return tuple(dict.fromkeys(m.topic for m in self.mappings))


def parse_duration(value: float | str) -> float:
    """``28d`` → 2419200.0; a bare number is seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"not a duration: {value!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


_ENV_OVERRIDES: Final = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "KAFKA_GROUP_ID": ("kafka", "group_id"),
    "KAFKA_DEAD_LETTER_TOPIC": ("kafka", "dead_letter_topic"),
    "TIKTOK_ENDPOINT": ("tiktok", "endpoint"),
    "TIKTOK_TEST_EVENT_CODE": ("tiktok", "test_event_code"),
    "TIKTOK_ACCESS_TOKEN_FILE": ("tiktok", "access_token_file"),
    "METRICS_PORT": ("metrics", "port"),
}


def _is_text(value: str) -> bool:
    # Python keeps undecodable environment bytes as lone surrogates, which every
    # consumer of the value (schema validator, librdkafka, stdout) would choke on.
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    for name, (section, key) in _ENV_OVERRIDES.items():
        if name in environ:
            value: Any = environ[name]
            if not _is_text(value):
                problems.append(f"{name}: not UTF-8 text")
                continue
            # Only plain ASCII digits (int() also reads "²" and has a length limit);
            # anything else stays a string and the schema reports it as the field.
            if key == "port" and value.isascii() and value.isdigit() and len(value) <= 6:
                value = int(value)
            target = raw.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
    for name, value in environ.items():
        if name.startswith("KAFKA_SETTING_") and len(name) > len("KAFKA_SETTING_"):
            if not (_is_text(name) and _is_text(value)):
                problems.append(f"{name}: not UTF-8 text")
                continue
            kafka = raw.setdefault("kafka", {})
            if isinstance(kafka, dict):
                settings = kafka.setdefault("settings", {})
                if isinstance(settings, dict):
                    prop = name[len("KAFKA_SETTING_") :].lower().replace("_", ".")
                    settings[prop] = value
    return problems


def _schema_node(schema: dict[str, Any], path: Any) -> Any:
    node: Any = schema
    for part in path:
        if isinstance(node, dict) and "$ref" in node and part not in node:
            node = _schema_node(schema, node["$ref"].lstrip("#/").split("/"))
        node = node[part] if isinstance(node, dict | list) else None
    return node


def _structural_problems(raw: Any) -> list[str]:
    schema = load_schema(SCHEMAS_DIR / CONFIG_SCHEMA)
    validator = jsonschema_rs.validator_for(schema, offline=True, mask=MASK)
    problems = []
    for error in validator.iter_errors(raw):
        where = format_path(error.instance_path)
        prefix = f"{where}." if where else ""
        kind = error.kind
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
            node = _schema_node(schema, list(error.schema_path)[:-1])
            known = list(node.get("properties", {})) if isinstance(node, dict) else []
            for key in kind.unexpected:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.append(f"{prefix}{key}: unknown setting{hint}")
        elif isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
            problems.append(f"{prefix}{kind.property}: required")
        elif isinstance(kind, jsonschema_rs.ValidationErrorKind.Enum):
            # The validator's own message names two values and counts the rest.
            allowed = ", ".join(str(option) for option in kind.options)
            problems.append(f"{where or '(top level)'}: must be one of {allowed}")
        else:
            message = error.message.replace(f"{MASK} is ", "value is ")
            problems.append(f"{where or '(top level)'}: {message}")
    return sorted(set(problems))


def _settings(raw: Mapping[str, Any]) -> dict[str, str | Secret]:
    out: dict[str, str | Secret] = {}
    for key, value in raw.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out[key] = Secret(text) if _SECRET_SETTING.search(key) else text
    return out


def _valid_part(raw: dict[str, Any], key: str, broken: set[str]) -> dict[str, Any]:
    # A section with a structural problem is replaced by an empty one, so the
    # rest of the file can still be checked and every problem reported at once.
    value = raw.get(key)
    return value if isinstance(value, dict) and key not in broken else {}


def _build(
    raw: dict[str, Any],
    base: Path,
    environ: Mapping[str, str],
    require_token: bool,
    broken: set[str],
) -> tuple[Config, list[str]]:
    problems = _value_problems(raw, broken)
    k = _valid_part(raw, "kafka", broken) or {"bootstrap_servers": "", "group_id": ""}
    t = _valid_part(raw, "tiktok", broken) or {"pixel_code": "INVALID0"}
    kafka = KafkaConfig(
        bootstrap_servers=k["bootstrap_servers"],
        group_id=k["group_id"],
        client_id=k.get("client_id", "tiktok-events"),
        dead_letter_topic=k.get("dead_letter_topic"),
        group_protocol=k.get("group_protocol", "classic"),
        max_record_bytes=k.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES),
        settings=_settings(k.get("settings", {})),
    )
    token_env = t.get("access_token_env", DEFAULT_TOKEN_ENV)
    token_file = Path(t["access_token_file"]) if t.get("access_token_file") else None
    if token_file is not None and not token_file.is_absolute():
        token_file = base / token_file
    env_token = environ.get(token_env, "").strip()
    token = AccessToken(token_env, Secret(env_token) if env_token else None, token_file)
    problems += _listed(_token_problem(token, require_token))
    pixels, pixel_problems = _pixels(t.get("pixels"), base, environ, require_token, broken)
    problems += pixel_problems
    tiktok = TikTokConfig(
        pixel_code=t["pixel_code"],
        access_token=token,
        endpoint=t.get("endpoint", DEFAULT_ENDPOINT),
        test_event_code=t.get("test_event_code"),
        partner_name=t.get("partner_name"),
        pixels=pixels,
    )

    d = dict(_valid_part(raw, "delivery", broken))
    for key in ("max_event_age", "max_future_skew"):
        if key in d:
            d[key + "_s"] = parse_duration(d.pop(key))
    delivery = DeliveryConfig(**d)
    if delivery.backoff_initial_ms > delivery.backoff_max_ms:
        problems.append("delivery.backoff_initial_ms: must not exceed delivery.backoff_max_ms")
    if delivery.max_buffered_events < delivery.max_batch_events:
        problems.append("delivery.max_buffered_events: must be at least delivery.max_batch_events")

    schemas_dir, schemas_problem = _schemas_dir(raw, base, broken)
    problems += _listed(schemas_problem)
    built = _Mappings(schemas_dir, schemas_problem is None, kafka.dead_letter_topic)
    raw_mappings = raw.get("mappings") if "mappings" not in broken else None
    for i, written in enumerate(raw_mappings if isinstance(raw_mappings, list) else []):
        where = f"mappings[{i}]"
        if where in broken or not isinstance(written, dict):
            continue
        expanded, expand_problems = _expanded(where, written)
        problems += expand_problems
        for m in expanded:
            problems += built.add(where, i, m)
    config = Config(
        kafka=kafka,
        tiktok=tiktok,
        mappings=tuple(built.mappings),
        delivery=delivery,
        dead_letter=_dead_letter(_valid_part(raw, "dead_letter", broken)),
        pii=PiiConfig(**_valid_part(raw, "pii", broken)),
        metrics=MetricsConfig(**_valid_part(raw, "metrics", broken)),
    )
    return config, problems


def _expanded(where: str, m: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The ordinary mappings a written mapping stands for (itself, or what its preset
    expands to) and the problems of what only a preset may say."""
    if "preset" not in m:
        problems = [
            f"{where}.{key}: only a mapping with a preset takes {key}"
            for key in ("events",)
            if key in m
        ]
        nulls = [target for target, spec in m["fields"].items() if spec is None]
        problems += [
            f"{where}.fields.{target}: null only removes a field that a preset gives"
            for target in nulls
        ]
        if nulls:  # said once here, not again by the compiler
            m = {**m, "fields": {k: v for k, v in m["fields"].items() if v is not None}}
        return [m], problems
    if "event" in m:
        return [], [
            f"{where}.event: a preset maps several events; change its table with "
            "events: {SOURCE NAME: TikTokEvent} instead"
        ]
    expanded = expand_preset(m)
    if not expanded:
        return [], [f"{where}.events: no event is left in the table of preset {m['preset']}"]
    return expanded, []


@dataclass
class _Mappings:
    """The mappings of the file as they are built, and what one must not repeat of another."""

    schemas_dir: Path
    schemas_dir_usable: bool
    dead_letter_topic: str | None
    mappings: list[MappingConfig] = field(default_factory=list)
    seen_names: dict[str, int] = field(default_factory=dict)
    topic_schema: dict[str, tuple[int, str | None]] = field(default_factory=dict)

    def add(self, where: str, i: int, m: dict[str, Any]) -> list[str]:
        """Build ``m`` (written at ``mappings[i]``, or expanded from it); its problems."""
        problems = []
        if m["name"] in self.seen_names:
            first_use = self.seen_names[m["name"]]
            problems.append(f"{where}.name: {m['name']!r} is already used by mappings[{first_use}]")
        self.seen_names.setdefault(m["name"], i)
        schema_name = m.get("schema")
        schema_path = self._schema_path(schema_name)
        # With schemas_dir unusable, every schema would repeat its problem.
        if schema_path is not None and self.schemas_dir_usable:
            problems += _listed(_path_problem(f"{where}.schema", schema_path))
        first = self.topic_schema.setdefault(m["topic"], (i, schema_name))
        if first[1] != schema_name:
            problems.append(
                f"{where}.schema: topic {m['topic']!r} already has schema {first[1]!r} "
                f"(mappings[{first[0]}]); every mapping of a topic must name the same schema"
            )
        if m["topic"] == self.dead_letter_topic:
            problems.append(f"{where}.topic: the dead-letter topic cannot be consumed")
        problems += _source_problems(where, m)
        self.mappings.append(
            MappingConfig(
                name=m["name"],
                topic=m["topic"],
                event=m["event"],
                fields=m["fields"],
                schema=schema_path,
                schema_name=schema_name,
                when=m.get("when"),
                event_id=m.get("event_id"),
                for_each=m.get("for_each"),
                event_source=m.get("event_source", "web"),
                event_source_id=m.get("event_source_id", m.get("pixel_code")),
                test_event_code=m.get("test_event_code"),
                limited_data_use=m.get("limited_data_use"),
                on_invalid_identifier=m.get("on_invalid_identifier", "drop"),
                preset=m.get("preset"),
                index=i,
            )
        )
        return problems

    def _schema_path(self, schema_name: str | None) -> Path | None:
        """A schema is looked for in ``schemas_dir``, then among the schemas shipped with
        the processor (a preset's, or ``clickstream/…`` beside a folder of one's own)."""
        if schema_name is None:
            return None
        path = self.schemas_dir / schema_name
        shipped = SCHEMAS_DIR / schema_name
        try:
            if not path.exists() and shipped.is_file():
                return shipped
        except OSError:  # a name too long, say: _path_problem says what is wrong with it
            pass
        return path


def _pixels(
    raw: Any, base: Path, environ: Mapping[str, str], require_token: bool, broken: set[str]
) -> tuple[tuple[PixelToken, ...], list[str]]:
    """The tenants of ``tiktok.pixels`` and their problems (an entry the schema refused is
    skipped: its own problems are reported already)."""
    pixels: list[PixelToken] = []
    problems: list[str] = []
    names: dict[str, int] = {}
    ids: dict[str, int] = {}
    for i, p in enumerate(raw if isinstance(raw, list) else []):
        where = f"tiktok.pixels[{i}]"
        if where in broken or not isinstance(p, dict):
            continue
        name, source_id = p["name"], p["event_source_id"]
        if name == DEFAULT_TENANT:
            problems.append(f"{where}.name: {name!r} is the default token's name; choose another")
        elif name in names:
            first = names[name]
            problems.append(f"{where}.name: {name!r} is already used by tiktok.pixels[{first}]")
        names.setdefault(name, i)
        if source_id in ids:
            problems.append(
                f"{where}.event_source_id: {source_id!r} is already listed by "
                f"tiktok.pixels[{ids[source_id]}]"
            )
        ids.setdefault(source_id, i)
        file_name, env_name = p.get("access_token_file"), p.get("access_token_env")
        if file_name is not None and env_name is not None:
            problems.append(
                f"{where}.access_token_env: give access_token_file or access_token_env, not both"
            )
            continue
        if file_name is None and env_name is None:
            problems.append(f"{where}.access_token_file: required (or access_token_env)")
            continue
        token_file = None if file_name is None else Path(file_name)
        if token_file is not None and not token_file.is_absolute():
            token_file = base / token_file
        env_value = "" if env_name is None else environ.get(env_name, "").strip()
        token = AccessToken(env_name or "", Secret(env_value) if env_value else None, token_file)
        problems += _listed(_token_problem(token, require_token, where))
        pixels.append(PixelToken(name, source_id, token))
    return tuple(pixels), problems


def _source_problems(where: str, m: Mapping[str, Any]) -> list[str]:
    """What a mapping's event source rules out: a missing or doubled source id, and the
    targets and event names TikTok does not take from that source."""
    source = m.get("event_source", "web")
    problems: list[str] = []
    if "pixel_code" in m and "event_source_id" in m:
        problems.append(
            f"{where}.pixel_code: give event_source_id or pixel_code, not both "
            "(pixel_code is a web mapping's event_source_id)"
        )
    elif "pixel_code" in m and source != "web":
        problems.append(
            f"{where}.pixel_code: only for event_source web; "
            f"give the {SOURCE_ID_NAMES[source]} as event_source_id"
        )
    elif "event_source_id" not in m and source != "web":
        problems.append(
            f"{where}.event_source_id: required for event_source {source} "
            f"(the {SOURCE_ID_NAMES[source]})"
        )
    rules = source_rules()[source]
    event_problem = rules.event_problem(m["event"])
    if event_problem is not None:
        problems.append(f"{where}.event: {event_problem}")
    if m.get("limited_data_use") is not None:
        problems += _listed(_field_problem(f"{where}.limited_data_use", rules, "limited_data_use"))
    for target in m["fields"]:
        # properties.contents[0].price is the payload's properties.contents[].price.
        path = target.replace("[0]", "")
        problems += _listed(_field_problem(f"{where}.fields.{target}", rules, path))
    return problems


def _field_problem(where: str, rules: SourceRules, path: str) -> str | None:
    problem = rules.field_problem(path)
    return None if problem is None else f"{where}: {problem}"


def _dead_letter(raw: Mapping[str, Any]) -> DeadLetterConfig:
    d = dict(raw)
    headers = d.pop("headers", {})
    if "allow" in headers:
        d["allow_headers"] = tuple(headers["allow"])
    if "deny" in headers:
        d["deny_headers"] = tuple(headers["deny"])
    return DeadLetterConfig(**d)


def _listed(problem: str | None) -> list[str]:
    return [] if problem is None else [problem]


def _value_problems(raw: dict[str, Any], broken: set[str]) -> list[str]:
    """What the schema cannot say about the kafka and tiktok sections' values."""
    problems: list[str] = []
    kafka = _valid_part(raw, "kafka", broken)
    # " " passes the schema's minLength, and librdkafka aborts the whole process
    # (an assertion in the client) when a consumer's group.id is blank.
    for key in ("bootstrap_servers", "group_id"):
        if isinstance(kafka.get(key), str) and not kafka[key].strip():
            problems.append(f"kafka.{key}: must not be blank")
    endpoint = _valid_part(raw, "tiktok", broken).get("endpoint")
    if isinstance(endpoint, str):
        problems += _listed(_endpoint_problem(endpoint))
    return problems


def _schemas_dir(raw: dict[str, Any], base: Path, broken: set[str]) -> tuple[Path, str | None]:
    """The folder of input schemas, and its problem if it is not a usable folder."""
    if not isinstance(raw.get("schemas_dir"), str) or "schemas_dir" in broken:
        return SCHEMAS_DIR, None
    folder = base / raw["schemas_dir"]
    return folder, _path_problem("schemas_dir", folder, folder=True)


def _kind(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def _path_problem(where: str, path: Path, *, folder: bool = False) -> str | None:
    """None when ``path`` is a readable file (or a folder); else the problem, naming ``where``.

    Any OSError of the check is a problem, not a crash: ENAMETOOLONG, ELOOP, EACCES …"""
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode) and not folder:
            # Schemas are read when the pipeline is built: unreadable is found now.
            with path.open("rb"):
                pass
    except (FileNotFoundError, NotADirectoryError):
        return f"{where}: {'folder' if folder else 'file'} not found: {path}"
    except OSError as exc:
        return f"{where}: cannot read {path}: {exc.strerror or exc}"
    except ValueError:  # a NUL in the name
        return f"{where}: not a usable path: {path}"
    if folder and not stat.S_ISDIR(mode):
        return f"{where}: not a folder: {path}"
    if not folder and not stat.S_ISREG(mode):
        return f"{where}: {path} is {_kind(mode)}"
    return None


def _token_problem(token: AccessToken, required: bool, section: str = "tiktok") -> str | None:
    """Why the token cannot be used (named as a field of ``section``). Offline
    (``required`` false) the file need not exist yet, since secrets are mounted where the
    processor runs; it must not be a directory."""
    if token.file is None:
        if required and token.env_value is None:
            return f"{section}.access_token_env: no access token in {token.source()}"
        return None
    where = f"{section}.access_token_file"
    try:
        mode = token.file.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"{where}: no access token in {token.source()} (not found)" if required else None
    except OSError as exc:
        if not required and exc.errno in (errno.EACCES, errno.EPERM):
            return None  # this machine may not see the secret; the deployment does
        return f"{where}: cannot read {token.file}: {exc.strerror or exc}"
    except ValueError:  # a NUL in the name
        return f"{where}: not a usable file name"
    if not stat.S_ISREG(mode):
        return f"{where}: {token.file} is {_kind(mode)}"
    if not required:
        return None
    try:
        text = _read_token_file(token.file)
    except OSError as exc:
        return f"{where}: cannot read {token.file}: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{where}: {token.file} is not UTF-8 text"
    except ValueError as exc:
        return f"{where}: {token.file} is {exc}"
    if not text:
        return f"{where}: no access token in {token.source()} (the file is empty)"
    return None


def _endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not an absolute http(s) URL with a host that parses.

    Stricter than the HTTP client on purpose (ASCII host names, ports 1-65535, no
    user info): whatever passes here, the sink's own check accepts too."""
    where = "tiktok.endpoint"
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in endpoint):
        return f"{where}: a URL cannot contain spaces or control characters"
    try:
        parts = urlsplit(endpoint)
    except ValueError as exc:
        return f"{where}: not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{where}: must be an absolute http:// or https:// URL with a host"
    if "@" in parts.netloc:
        return f"{where}: must not contain a user name or password (the token is a header)"
    match = _NETLOC.match(parts.netloc)
    if match is None:
        return f"{where}: not a valid host[:port]: {parts.netloc!r}"
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return f"{where}: port {port} is not between 1 and 65535"
    host = match.group("host")
    if host is None:
        try:
            ipaddress.IPv6Address(match.group("ipv6"))
        except ValueError:
            return f"{where}: not a valid IPv6 address: [{match.group('ipv6')}]"
        return None
    return _host_problem(where, host)


def _host_problem(where: str, host: str) -> str | None:
    if not host.isascii():
        return f"{where}: write the host name {host!r} in ASCII (punycode: xn--…)"
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{where}: not a valid IPv4 address: {host}"
        return None
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return f"{where}: not a valid host name: {host!r}"
    for label in labels:
        if label.lower().startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                return f"{where}: not a valid internationalised host name: {host!r}"
    return None


def one_line(problem: str) -> str:
    """``problem`` as one printable line of bounded length: control characters and line
    breaks (from keys, values or paths in the file) are escaped, the middle of an
    enormous one is elided."""
    flat = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", problem)
    if len(flat) > MAX_PROBLEM_CHARS:
        keep = MAX_PROBLEM_CHARS // 2
        flat = f"{flat[:keep]} … {flat[-keep:]}"
    return flat


def load_config(
    path: Path | str,
    *,
    environ: Mapping[str, str] | None = None,
    require_token: bool = False,
    check: Callable[[Config], Sequence[str]] | None = None,
) -> Config:
    """Read, override, validate and freeze the configuration at ``path``.

    ``require_token``: the token must be available now (``run`` needs it; the
    offline commands do not). ``check`` returns further problems of a built
    configuration (the mapping compiler's, librdkafka's); it sees the sections and
    mappings without structural problems (a broken section is replaced by its
    defaults), so one call reports every problem in the file.
    Raises :class:`ConfigError` listing every problem, each on one line.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        found = (
            "an empty file"
            if raw is None
            else f"a YAML {'list' if isinstance(raw, list) else 'scalar'}"
        )
        raise ConfigError([f"{path}: the configuration must be a YAML mapping, not {found}"])
    problems = _apply_env(raw, env)
    problems += _structural_problems(raw)
    broken = {_section_of(p) for p in problems}
    config, more = _build(raw, path.resolve().parent, env, require_token, broken)
    problems += more
    if check is not None:
        problems += check(config)
    if problems:
        # A problem of a preset mapping's override repeats in every mapping it expands to.
        raise ConfigError(list(dict.fromkeys(one_line(p) for p in problems)))
    return replace(config, source=path)


def _section_of(problem: str) -> str:
    """``mappings[2].fields.x: …`` → ``mappings[2]``; ``kafka.group_id: …`` → ``kafka``;
    ``tiktok.pixels[1].name: …`` → ``tiktok.pixels[1]`` (one bad tenant leaves the rest
    of the tiktok section to be checked)."""
    where = problem.split(":", 1)[0]
    if where.startswith("tiktok.pixels["):
        return where.split("]", 1)[0] + "]"
    head = where.split(".", 1)[0]
    return head if head != "(top level)" else ""
