"""The configuration: one YAML file plus environment overrides → frozen objects.

This module is the only place that reads the environment. Loading validates the
file against ``schemas/config.schema.json`` and then checks what a schema cannot
(files exist, names are unique, a topic has one input schema), and reports every
problem at once as ``path: message`` in a :class:`~processor.errors.ConfigError`.

Secrets (the TikTok access token, librdkafka passwords) are held in
:class:`Secret`, whose ``repr`` and ``str`` never show the value. The token is
never read from the YAML file itself: it comes from an environment variable or
a file, and the file is re-read after a token error so rotation needs no restart.

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
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import jsonschema_rs
import yaml

from processor.errors import ConfigError
from processor.schemas import MASK, SCHEMAS_DIR, format_path, load_schema

DEFAULT_ENDPOINT: Final = "https://business-api.tiktok.com/open_api/v1.3/event/track/"
DEFAULT_TOKEN_ENV: Final = "TIKTOK_ACCESS_TOKEN"  # noqa: S105 - a variable name, not a token
CONFIG_SCHEMA: Final = "config.schema.json"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SECRET_SETTING = re.compile(r"password|secret|token|key\.pem|credentials", re.IGNORECASE)


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
        """The token now: the file's content (re-read on every call) or the env value."""
        if self.file is not None:
            try:
                text = self.file.read_text(encoding="utf-8").strip()
            except OSError:
                return None
            return Secret(text) if text else None
        return self.env_value


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str
    group_id: str
    client_id: str = "tiktok-events"
    dead_letter_topic: str | None = None
    group_protocol: str = "classic"
    # Values whose names look secret are wrapped in Secret.
    settings: Mapping[str, str | Secret] = field(default_factory=dict)

    def librdkafka_settings(self) -> dict[str, str]:
        """The pass-through settings with secrets revealed, for the client constructors only."""
        return {k: v.reveal() if isinstance(v, Secret) else v for k, v in self.settings.items()}


@dataclass(frozen=True, slots=True)
class TikTokConfig:
    pixel_code: str
    access_token: AccessToken
    endpoint: str = DEFAULT_ENDPOINT
    test_event_code: str | None = None
    partner_name: str | None = None


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


@dataclass(frozen=True, slots=True)
class DeadLetterConfig:
    max_ratio: float = 0.5
    window: int = 1000
    max_consecutive: int = 1000


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
    pixel_code: str | None = None
    test_event_code: str | None = None
    limited_data_use: bool | None = None
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


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, (section, key) in _ENV_OVERRIDES.items():
        if name in environ:
            value: Any = environ[name]
            if key == "port" and value.isdigit():
                value = int(value)
            target = raw.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
    for name, value in environ.items():
        if name.startswith("KAFKA_SETTING_") and len(name) > len("KAFKA_SETTING_"):
            kafka = raw.setdefault("kafka", {})
            if isinstance(kafka, dict):
                settings = kafka.setdefault("settings", {})
                if isinstance(settings, dict):
                    prop = name[len("KAFKA_SETTING_") :].lower().replace("_", ".")
                    settings[prop] = value


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
    problems: list[str] = []
    k = _valid_part(raw, "kafka", broken) or {"bootstrap_servers": "", "group_id": ""}
    t = _valid_part(raw, "tiktok", broken) or {"pixel_code": "INVALID0"}
    kafka = KafkaConfig(
        bootstrap_servers=k["bootstrap_servers"],
        group_id=k["group_id"],
        client_id=k.get("client_id", "tiktok-events"),
        dead_letter_topic=k.get("dead_letter_topic"),
        group_protocol=k.get("group_protocol", "classic"),
        settings=_settings(k.get("settings", {})),
    )
    token_env = t.get("access_token_env", DEFAULT_TOKEN_ENV)
    token_file = Path(t["access_token_file"]) if t.get("access_token_file") else None
    if token_file is not None and not token_file.is_absolute():
        token_file = base / token_file
    env_token = environ.get(token_env, "").strip()
    token = AccessToken(token_env, Secret(env_token) if env_token else None, token_file)
    if require_token and token.current() is None:
        where = "tiktok.access_token_file" if token_file else "tiktok.access_token_env"
        problems.append(f"{where}: no access token in {token.source()}")
    tiktok = TikTokConfig(
        pixel_code=t["pixel_code"],
        access_token=token,
        endpoint=t.get("endpoint", DEFAULT_ENDPOINT),
        test_event_code=t.get("test_event_code"),
        partner_name=t.get("partner_name"),
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

    schemas_dir = base / raw["schemas_dir"] if "schemas_dir" in raw else SCHEMAS_DIR
    mappings: list[MappingConfig] = []
    seen_names: dict[str, int] = {}
    topic_schema: dict[str, tuple[int, str | None]] = {}
    raw_mappings = raw.get("mappings") if "mappings" not in broken else None
    for i, m in enumerate(raw_mappings if isinstance(raw_mappings, list) else []):
        where = f"mappings[{i}]"
        if where in broken or not isinstance(m, dict):
            continue
        if m["name"] in seen_names:
            problems.append(
                f"{where}.name: {m['name']!r} is already used by mappings[{seen_names[m['name']]}]"
            )
        seen_names.setdefault(m["name"], i)
        schema_name = m.get("schema")
        schema_path = schemas_dir / schema_name if schema_name else None
        if schema_path is not None and not schema_path.is_file():
            problems.append(f"{where}.schema: file not found: {schema_path}")
        first = topic_schema.setdefault(m["topic"], (i, schema_name))
        if first[1] != schema_name:
            problems.append(
                f"{where}.schema: topic {m['topic']!r} already has schema {first[1]!r} "
                f"(mappings[{first[0]}]); every mapping of a topic must name the same schema"
            )
        if m["topic"] == kafka.dead_letter_topic:
            problems.append(f"{where}.topic: the dead-letter topic cannot be consumed")
        mappings.append(
            MappingConfig(
                name=m["name"],
                topic=m["topic"],
                event=m["event"],
                fields=m["fields"],
                schema=schema_path,
                schema_name=schema_name,
                when=m.get("when"),
                event_id=m.get("event_id"),
                pixel_code=m.get("pixel_code"),
                test_event_code=m.get("test_event_code"),
                limited_data_use=m.get("limited_data_use"),
                index=i,
            )
        )
    config = Config(
        kafka=kafka,
        tiktok=tiktok,
        mappings=tuple(mappings),
        delivery=delivery,
        dead_letter=DeadLetterConfig(**_valid_part(raw, "dead_letter", broken)),
        pii=PiiConfig(**_valid_part(raw, "pii", broken)),
        metrics=MetricsConfig(**_valid_part(raw, "metrics", broken)),
    )
    return config, problems


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
    configuration (the mapping compiler's); it sees only the mappings without
    structural problems, so one call reports every problem in the file.
    Raises :class:`ConfigError` listing every problem.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the configuration must be a YAML mapping"])
    _apply_env(raw, env)
    problems = _structural_problems(raw)
    broken = {_section_of(p) for p in problems}
    config, more = _build(raw, path.resolve().parent, env, require_token, broken)
    problems += more
    if check is not None and config.mappings:
        problems += check(config)
    if problems:
        raise ConfigError(problems)
    return replace(config, source=path)


def _section_of(problem: str) -> str:
    """``mappings[2].fields.x: …`` → ``mappings[2]``; ``kafka.group_id: …`` → ``kafka``."""
    where = problem.split(":", 1)[0]
    head = where.split(".", 1)[0]
    return head if head != "(top level)" else ""
