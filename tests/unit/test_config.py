"""Loading the configuration: validation with paths, env overrides, secrets."""

from __future__ import annotations

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
