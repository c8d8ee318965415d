"""Loading the configuration: validation with paths, env overrides, secrets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processor.config import Secret, load_config, parse_duration
from processor.errors import ConfigError
from processor.transform import load_pipeline
from tests.conftest import EXAMPLE_CONFIG

WriteConfig = Callable[..., Path]


def problems_of(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, clock=lambda: 0.0, **kwargs)
    return list(caught.value.problems)


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE_CONFIG, environ={})
    assert config.tiktok.pixel_code == "D34FV3JC77U1PDQ72P1G"
    assert config.topics == ("web.pageviews", "web.signups", "web.clicks", "web.forms")
    assert config.delivery.max_event_age_s == 28 * 86400
    assert [m.event for m in config.mappings] == [
        "ViewContent",
        "CompleteRegistration",
        "ClickButton",
        "Lead",
    ]


def test_three_distinct_mistakes_are_all_reported_with_their_paths(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["kafka"]["bootstrap_server"] = example_raw["kafka"].pop("bootstrap_servers")
    example_raw["delivery"]["max_batch_events"] = 5000
    example_raw["mappings"][2]["fields"]["user.emial"] = "user.email"
    problems = problems_of(write_config(example_raw))
    text = "\n".join(problems)
    assert "kafka.bootstrap_server: unknown setting; did you mean bootstrap_servers?" in text
    assert "delivery.max_batch_events" in text
    assert "mappings[2].fields.user.emial: unknown TikTok field; did you mean user.email?" in text


def test_mapping_mistakes_are_reported_alongside_structural_ones(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["metrics"] = {"port": "not-a-port"}
    example_raw["mappings"][0]["when"] = {"field": "page.type", "regex": "("}
    example_raw["mappings"][1]["fields"].pop("event_time")
    example_raw["mappings"][3]["when"] = {"field": "form.kind", "equal": "x"}
    problems = problems_of(write_config(example_raw))
    assert any(p.startswith("metrics.port:") for p in problems)
    assert any(p.startswith("mappings[0].when.regex: invalid regular expression") for p in problems)
    assert any(p.startswith("mappings[1].fields.event_time: required") for p in problems)
    assert any(
        "mappings[3].when: unknown operator ['equal']; did you mean equals?" in p for p in problems
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["mappings"].append(dict(r["mappings"][0])), "mappings[4].name: 'important-page-views' is already used by mappings[0]"),
        (lambda r: r["mappings"][1].update(schema="clickstream/nope.v1.json"), "mappings[1].schema: file not found"),
        (lambda r: r["mappings"][1].update(topic="web.pageviews"), "every mapping of a topic must name the same schema"),
        (lambda r: r["mappings"][1].update(topic="clickstream.dlq"), "mappings[1].topic: the dead-letter topic cannot be consumed"),
        (lambda r: r["delivery"].update(backoff_initial_ms=5000, backoff_max_ms=100), "delivery.backoff_initial_ms"),
        (lambda r: r["tiktok"].update(pixel_code="lowercase"), "tiktok.pixel_code"),
        (lambda r: r["mappings"][0]["fields"].update({"user.ip": {"pth": "x"}}), "mappings[0].fields.user.ip: a value object has exactly one of"),
        (lambda r: r["mappings"][0]["fields"].update({"properties.contents[0].sku": "x"}), "not a content field"),
        (lambda r: r["mappings"][0].update(when={"all": "nope"}), "mappings[0].when: all/any take a non-empty list"),
        (lambda r: r["mappings"][0].update(when={"field": "x", "gt": "ten"}), "mappings[0].when.gt: must be a number"),
    ],
)  # fmt: skip
def test_semantic_problems_name_the_field(
    example_raw: dict[str, Any], write_config: WriteConfig, change: Any, expected: str
) -> None:
    change(example_raw)
    assert any(expected in p for p in problems_of(write_config(example_raw)))


def test_not_yaml_and_not_a_mapping_fail_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_environment_overrides_connection_settings() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
        "KAFKA_GROUP_ID": "other-group",
        "TIKTOK_ENDPOINT": "http://127.0.0.1:8080/open_api/v1.3/event/track/",
        "TIKTOK_TEST_EVENT_CODE": "TEST42",
        "METRICS_PORT": "9999",
        "KAFKA_SETTING_SASL_PASSWORD": "hunter2",
        "KAFKA_SETTING_SECURITY_PROTOCOL": "SASL_SSL",
    }
    config = load_config(EXAMPLE_CONFIG, environ=env)
    assert config.kafka.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert config.kafka.group_id == "other-group"
    assert config.tiktok.endpoint.startswith("http://127.0.0.1:8080/")
    assert config.tiktok.test_event_code == "TEST42"
    assert config.metrics.port == 9999
    assert config.kafka.librdkafka_settings() == {
        "sasl.password": "hunter2",
        "security.protocol": "SASL_SSL",
    }
    assert "hunter2" not in repr(config)


def test_invalid_override_is_reported_as_its_field() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.port"):
        load_config(EXAMPLE_CONFIG, environ={"METRICS_PORT": "ninety"})


def test_token_from_environment_is_redacted_everywhere() -> None:
    token = "tt-secret-token-value"
    config = load_config(EXAMPLE_CONFIG, environ={"TIKTOK_ACCESS_TOKEN": token}, require_token=True)
    current = config.tiktok.access_token.current()
    assert current is not None
    assert current.reveal() == token
    for text in (repr(config), str(config), repr(current), str(current), f"{current}"):
        assert token not in text


def test_token_file_wins_and_is_reread(
    tmp_path: Path, example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    example_raw["tiktok"]["access_token_file"] = str(token_file)
    config = load_config(write_config(example_raw), environ={"TIKTOK_ACCESS_TOKEN": "env"})
    assert config.tiktok.access_token.current() == Secret("first-token")
    token_file.write_text("rotated-token")
    assert config.tiktok.access_token.current() == Secret("rotated-token")
    assert "token" not in repr(config.tiktok.access_token.current()).replace("Secret", "")


def test_run_needs_a_token(
    tmp_path: Path, example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    with pytest.raises(ConfigError, match=r"tiktok\.access_token_env: no access token"):
        load_config(EXAMPLE_CONFIG, environ={}, require_token=True)
    example_raw["tiktok"]["access_token_file"] = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"tiktok\.access_token_file: no access token"):
        load_config(write_config(example_raw), environ={}, require_token=True)


def test_the_token_cannot_be_written_in_the_file(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["tiktok"]["access_token"] = "inline-secret"
    problems = problems_of(write_config(example_raw))
    assert any(p.startswith("tiktok.access_token: unknown setting") for p in problems)
    assert not any("inline-secret" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "seconds"), [("28d", 2_419_200), ("500ms", 0.5), ("1.5h", 5400), (30, 30)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


# --- Reading the file within bounds (processor.safeyaml) ---------------------------


def yaml_problems(tmp_path: Path, data: bytes | str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return [p.replace(str(path), "FILE") for p in caught.value.problems]


def test_aliases_and_merge_keys_within_the_limits_load(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    # yaml.safe_dump writes an object used twice as an anchor and an alias.
    shared = example_raw["mappings"][0]["fields"]
    example_raw["mappings"][1]["fields"] = shared
    text = write_config(example_raw).read_text()
    assert "*id001" in text
    config = load_config(write_config(example_raw), environ={})
    assert config.mappings[1].fields == config.mappings[0].fields


def test_merge_keys_keep_working_and_explicit_keys_win(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        EXAMPLE_CONFIG.read_text().replace(
            "delivery:\n", "defaults: &d {linger_ms: 50, max_in_flight: 2}\ndelivery:\n  <<: *d\n"
        )
    )
    problems = problems_of(path)
    # The anchor's own key is unknown, but the merge worked: linger_ms 200 (explicit) wins.
    assert problems == ["defaults: unknown setting"]


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    text = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        text += f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    began = time.perf_counter()
    assert yaml_problems(tmp_path, text) == [
        "FILE:6: more than 100,000 values (an alias counts as the values it repeats)"
    ]
    assert time.perf_counter() - began < 1


def test_an_alias_inside_its_own_value_is_refused(tmp_path: Path) -> None:
    assert yaml_problems(tmp_path, "a: &a {b: [1, *a]}\n") == [
        "FILE:1: alias *a is inside the value it names"
    ]


@pytest.mark.parametrize(("depth", "refused"), [(64, False), (65, True)])
def test_nesting_is_bounded_at_64_levels(tmp_path: Path, depth: int, refused: bool) -> None:
    # The top-level mapping is the first level.
    text = "x: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"
    problems = yaml_problems(tmp_path, text)
    assert ("FILE:1: nested deeper than 64 levels" in problems) is refused


def test_five_hundred_nested_nots_never_reach_the_rule_compiler(
    example_raw: dict[str, Any], tmp_path: Path
) -> None:
    rule = "{field: form.kind, equals: newsletter}"
    for _ in range(500):
        rule = "{not: " + rule + "}"
    text = EXAMPLE_CONFIG.read_text().replace(
        "when: {not: {field: form.kind, equals: newsletter}}", f"when: {rule}"
    )
    (problem,) = yaml_problems(tmp_path, text)
    assert problem.startswith("FILE:")
    assert problem.endswith(": nested deeper than 64 levels")


def test_not_utf8_names_the_byte_its_offset_and_line(tmp_path: Path) -> None:
    assert yaml_problems(tmp_path, b"kafka:\n  group_id: caf\xe9\n") == [
        "FILE:2: not UTF-8 text (byte 0xe9 at offset 22)"
    ]


def test_a_file_over_one_mebibyte_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    assert yaml_problems(tmp_path, "# padding\n" * 110_000) == [
        "FILE: larger than the 1 MiB a configuration may be"
    ]
    # A device that never ends is read only one byte past the limit.
    with pytest.raises(ConfigError, match="larger than the 1 MiB"):
        load_config("/dev/zero", environ={})


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    assert yaml_problems(tmp_path, "kafka: {}\ntiktok: {}\nkafka: {}\n") == [
        "FILE:3: duplicate key 'kafka' (first at line 1)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on: 1\n", "FILE:1: a key must be a string, not a boolean ('on'); quote it"),
        ("404: 1\n", "FILE:1: a key must be a string, not a number ('404'); quote it"),
        ("? [a]\n: 1\n", "FILE:1: a key must be a string, not a list or mapping"),
        ("a: !!binary aGk=\n", "FILE:1: YAML type !!binary has no JSON equivalent and is not allowed"),
        ("a: !!set {x}\n", "FILE:1: YAML type !!set has no JSON equivalent and is not allowed"),
        ("a: .nan\n", "FILE:1: .nan is not a number"),
        ("a: 1" + "0" * 5000 + "\n", "FILE:1: integer too long (5,001 digits)"),
        ("a:\n\tb: 1\n", "FILE:2:1: not valid YAML: found character that cannot start any token (while scanning for the next token); YAML is indented with spaces, not tabs"),
        ("", "FILE: the configuration must be a YAML mapping, not an empty file"),
        ("- a\n", "FILE: the configuration must be a YAML mapping, not a YAML list"),
    ],
)  # fmt: skip
def test_what_json_cannot_hold_is_refused_with_its_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert yaml_problems(tmp_path, text) == [expected]


def test_dates_stay_the_text_they_were_written_as(
    example_raw: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        EXAMPLE_CONFIG.read_text().replace(
            "when: {not: {field: form.kind, equals: newsletter}}",
            "when: {field: form.kind, equals: 2026-01-01}",
        )
    )
    config = load_config(path, environ={})
    assert config.mappings[3].when == {"field": "form.kind", "equals": "2026-01-01"}


# --- Checks that cannot crash ----------------------------------------------------


def test_an_over_long_schemas_dir_is_a_problem_of_that_field(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["schemas_dir"] = "s" * 5000
    problems = problems_of(write_config(example_raw))
    assert len(problems) == 1
    assert problems[0].startswith("schemas_dir: cannot read ")
    assert problems[0].endswith(": File name too long")
    assert len(problems[0]) <= 400 + len(" … ")


def test_a_schema_that_is_a_folder_names_its_mapping(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"][1]["schema"] = "clickstream"
    assert any(
        p.startswith("mappings[1].schema: ") and p.endswith(" is a directory")
        for p in problems_of(write_config(example_raw))
    )


def test_a_token_file_that_is_a_folder_fails_even_offline(
    tmp_path: Path, example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["tiktok"]["access_token_file"] = str(tmp_path)
    assert f"tiktok.access_token_file: {tmp_path} is a directory" in problems_of(
        write_config(example_raw)
    )


def test_a_missing_token_file_is_fine_offline_but_not_for_run(
    tmp_path: Path, example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["tiktok"]["access_token_file"] = str(tmp_path / "mounted-later")
    path = write_config(example_raw)
    load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"access_token_file: no access token .*\(not found\)"):
        load_config(path, environ={}, require_token=True)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "(the file is empty)"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"t" * (64 * 1024 + 1), "is larger than 64 KiB"),
    ],
)
def test_a_token_file_that_holds_no_token_says_why(
    tmp_path: Path,
    example_raw: dict[str, Any],
    write_config: WriteConfig,
    content: bytes,
    expected: str,
) -> None:
    token = tmp_path / "token"
    token.write_bytes(content)
    example_raw["tiktok"]["access_token_file"] = str(token)
    config_path = write_config(example_raw)
    with pytest.raises(ConfigError) as caught:
        load_config(config_path, environ={}, require_token=True)
    (problem,) = caught.value.problems
    assert problem.startswith("tiktok.access_token_file: ")
    assert expected in problem
    # At run time a re-read of such a file is "no token", never an exception.
    assert load_config(config_path, environ={}).tiktok.access_token.current() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"METRICS_PORT": "9" * 5000}, 'metrics.port: value is not of type "integer"'),
        ({"METRICS_PORT": "²"}, 'metrics.port: value is not of type "integer"'),
        ({"KAFKA_GROUP_ID": "caf\udce9"}, "KAFKA_GROUP_ID: not UTF-8 text"),
        ({"KAFKA_SETTING_CLIENT_RACK": "\udcff"}, "KAFKA_SETTING_CLIENT_RACK: not UTF-8 text"),
        ({"KAFKA_GROUP_ID": " "}, "kafka.group_id: must not be blank"),
    ],
)
def test_environment_values_that_cannot_be_used_are_problems(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE_CONFIG, environ=env)
    assert expected in caught.value.problems


REFUSED_ENDPOINTS = [
    "http://[::1", "http://[zz]/", "http://:80/", "http:///x", "http://host:99999/",
    "http://host:0/", "http://host:/", "http://host:abc/", "http://[::1]x/", "http://exa$mple.com/",
    "http://a..b/", "http://-a.com/", "http://émoji.com/", "http://xn--/", "http://a%20b/",
    "http://user:pw@host/", "http://host/\x7f", "http://1.2.3.256/", "http://[fe80::1%25eth0]/",
    "ftp://host/", "http://" + "a" * 64 + ".com/",
]  # fmt: skip
ACCEPTED_ENDPOINTS = [
    "https://business-api.tiktok.com/open_api/v1.3/event/track/", "http://[::1]:8080/x",
    "http://sandbox:8080/open_api/v1.3/event/track/", "http://127.0.0.1:8080/x", "http://ex_ample/",
    "http://xn--bcher-kva.example/", "http://localhost:65535", "http://host./x?y#z",
]  # fmt: skip


@pytest.mark.parametrize("endpoint", REFUSED_ENDPOINTS)
def test_an_endpoint_that_does_not_parse_is_a_problem_of_tiktok_endpoint(endpoint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE_CONFIG, environ={"TIKTOK_ENDPOINT": endpoint})
    (problem,) = caught.value.problems
    assert problem.startswith("tiktok.endpoint: ")


@pytest.mark.parametrize("endpoint", ACCEPTED_ENDPOINTS)
def test_an_endpoint_the_config_accepts_is_one_the_sink_accepts(endpoint: str) -> None:
    from processor.sink.client import check_endpoint  # noqa: PLC0415 - only this test needs httpx

    config = load_config(EXAMPLE_CONFIG, environ={"TIKTOK_ENDPOINT": endpoint})
    assert check_endpoint(config.tiktok.endpoint) == endpoint


def test_an_unclosed_ipv6_endpoint_is_named(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["tiktok"]["endpoint"] = "http://[::1"
    assert problems_of(write_config(example_raw)) == [
        "tiktok.endpoint: not a valid URL (Invalid IPv6 URL)"
    ]


def test_every_problem_is_one_printable_line(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["bad\nkey\u2028x"] = 1
    example_raw["k" * 10_000] = 1
    problems = problems_of(write_config(example_raw))
    assert "bad\\x0akey\\x2028x: unknown setting" in problems
    for problem in problems:
        assert problem.splitlines() == [problem]
        assert len(problem) <= 400 + len(" … ")


# --- librdkafka's view of kafka.settings (processor.kafka.settings.settings_problems) -----


def test_unknown_and_invalid_librdkafka_settings_are_named(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["kafka"]["settings"] = {"security.protocol": "bogus", "acks": "sometimes"}
    problems = problems_of(write_config(example_raw), environ={"KAFKA_SETTING_NO_SUCH_PROP": "1"})
    assert 'kafka.settings.no.such.prop: No such configuration property: "no.such.prop"' in problems
    assert (
        'kafka.settings.security.protocol: Invalid value "bogus" for configuration property '
        '"security.protocol"' in problems
    )
    # librdkafka names the property by its canonical name; the problem keeps the user's.
    assert any(p.startswith("kafka.settings.acks: ") for p in problems)


def test_what_only_a_built_client_refuses_is_an_error_offline_too(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    # The dead-letter producer is idempotent, which needs acks=all: no secret of the
    # deployment changes that, so check-config fails on it as run does.
    example_raw["kafka"]["settings"] = {"acks": "1"}
    path = write_config(example_raw)
    expected = [
        "kafka.settings.acks: librdkafka cannot build the dead-letter producer: "
        "`acks` must be set to `all` when `enable.idempotence` is true"
    ]
    assert problems_of(path, environ={}) == expected
    assert problems_of(path, environ={"TIKTOK_ACCESS_TOKEN": "t"}, require_token=True) == expected


def test_a_refusal_only_the_deployments_secrets_can_fix_is_a_warning_offline(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    # The password comes from the pod's environment: an offline check cannot have it.
    example_raw["kafka"]["settings"] = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
    }
    path = write_config(example_raw)
    _, _, warnings = load_pipeline(path, clock=lambda: 0.0, environ={})
    assert any("sasl.username and sasl.password must be set" in w for w in warnings)
    problems = problems_of(path, environ={"TIKTOK_ACCESS_TOKEN": "t"}, require_token=True)
    assert problems == [
        "kafka.settings: librdkafka cannot build the Kafka consumer: "
        "sasl.username and sasl.password must be set"
    ]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"group.id": " "}, "kafka.settings.group.id: must not be blank"),
        ({"security.protocol\0x": "PLAINTEXT"}, "contains a NUL character"),
    ],
)
def test_settings_that_would_abort_or_mislead_librdkafka_are_refused_first(
    example_raw: dict[str, Any], write_config: WriteConfig, settings: dict[str, str], expected: str
) -> None:
    example_raw["kafka"]["settings"] = settings
    problems = problems_of(
        write_config(example_raw), environ={"TIKTOK_ACCESS_TOKEN": "t"}, require_token=True
    )
    assert any(expected in p for p in problems)


def test_the_settings_check_never_names_a_broker_and_takes_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from processor.kafka import settings as source  # noqa: PLC0415 - the Kafka module, loaded for this test only

    config = load_config(EXAMPLE_CONFIG, environ={"KAFKA_SETTING_METADATA_BROKER_LIST": "b:9092"})
    built: list[dict[str, Any]] = []
    real_consumer, real_producer = source.Consumer, source.Producer

    def consumer(settings: dict[str, Any], **kwargs: Any) -> Any:
        built.append(settings)
        return real_consumer(settings, **kwargs)

    def producer(settings: dict[str, Any], **kwargs: Any) -> Any:
        built.append(settings)
        return real_producer(settings, **kwargs)

    monkeypatch.setattr(source, "Consumer", consumer)
    monkeypatch.setattr(source, "Producer", producer)
    began = time.perf_counter()
    assert source.settings_problems(config.kafka) == []
    assert time.perf_counter() - began < 0.5
    assert len(built) == 3  # the property alone, the consumer, the dead-letter producer
    for settings in built:
        assert "bootstrap.servers" not in settings
        assert "metadata.broker.list" not in settings or settings.get(
            "tiktok.events.settings.probe"
        )


def test_a_compiler_failure_names_its_mapping_and_keeps_the_other_problems(
    example_raw: dict[str, Any], write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processor import transform  # noqa: PLC0415

    real = transform.compile_mappings

    def compile_mappings(config: Any) -> Any:
        if any(m.index == 2 for m in config.mappings):
            raise TypeError("'int' object is not iterable")
        return real(config)

    monkeypatch.setattr(transform, "compile_mappings", compile_mappings)
    example_raw["mappings"][0]["when"] = {"field": "page.type", "regex": "("}
    problems = problems_of(write_config(example_raw))
    assert (
        "mappings[2]: the mapping compiler failed on it (TypeError: 'int' object is not "
        "iterable); a bug in the processor, please report it" in problems
    )
    assert any(p.startswith("mappings[0].when.regex: invalid regular expression") for p in problems)


def test_dead_letter_size_and_header_rules_load_with_their_defaults(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    config = load_config(write_config(example_raw), environ={})
    assert config.kafka.max_record_bytes == 1_000_000
    assert config.dead_letter.max_message_bytes == 1_000_000
    assert config.dead_letter.allow_headers == ("*",)
    assert {"authorization", "cookie", "*token*", "*secret*", "*password*"} <= set(
        config.dead_letter.deny_headers
    )
    assert config.delivery.stall_timeout_s == 120
    example_raw["kafka"]["max_record_bytes"] = 5_000_000
    example_raw.setdefault("dead_letter", {}).update(
        max_message_bytes=2_000_000, headers={"allow": ["trace-*"], "deny": []}
    )
    example_raw["delivery"]["stall_timeout_s"] = 30
    config = load_config(write_config(example_raw), environ={})
    assert config.kafka.max_record_bytes == 5_000_000
    assert config.dead_letter.max_message_bytes == 2_000_000
    assert (config.dead_letter.allow_headers, config.dead_letter.deny_headers) == (("trace-*",), ())
    assert config.delivery.stall_timeout_s == 30


def test_dead_letter_limits_out_of_range_are_named(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["kafka"]["max_record_bytes"] = 10
    example_raw["dead_letter"] = {"max_message_bytes": 100, "headers": {"deny": [""]}}
    example_raw["delivery"]["stall_timeout_s"] = 0
    problems = "\n".join(problems_of(write_config(example_raw)))
    assert "kafka.max_record_bytes:" in problems
    assert "dead_letter.max_message_bytes:" in problems
    assert "dead_letter.headers.deny[0]:" in problems
    assert "delivery.stall_timeout_s:" in problems


def test_the_consumer_prefetches_16_mb_in_8_mb_fetches_unless_kafka_settings_say_otherwise(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    from processor.kafka.settings import (  # noqa: PLC0415
        FETCH_MAX_BYTES,
        FETCH_QUEUE_BACKOFF_MS,
        PREFETCH_KBYTES,
        consumer_settings,
    )

    defaults = consumer_settings(load_config(write_config(example_raw), environ={}).kafka)
    assert defaults["queued.max.messages.kbytes"] == PREFETCH_KBYTES == 16_384
    assert defaults["fetch.max.bytes"] == FETCH_MAX_BYTES == 8_388_608
    # A full queue postpones fetching for 20 ms, not librdkafka's second.
    assert defaults["fetch.queue.backoff.ms"] == FETCH_QUEUE_BACKOFF_MS == 20
    settings = {
        "queued.max.messages.kbytes": "65536",
        "fetch.max.bytes": "52428800",
        "fetch.queue.backoff.ms": "1000",
    }
    example_raw["kafka"]["settings"] = settings
    chosen = consumer_settings(load_config(write_config(example_raw), environ={}).kafka)
    assert {name: chosen[name] for name in settings} == settings
