"""Event sources (web, app, offline, crm): configuration, mapped events, request bodies,
and the per-source rules of the request schema as the sandbox applies them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from processor.config import load_config
from processor.errors import ConfigError, SchemaViolation
from processor.mapping.coerce import SECTION_FIELDS
from processor.mapping.compiler import LEGACY_EVENTS, RENAMED_EVENTS, STANDARD_EVENTS
from processor.payload import BatchKey, batch_key, encode_request, request_body
from processor.sandbox.protocol import Code
from processor.sandbox.validation import check_body, check_source
from processor.schemas import (
    source_rules,
    standard_events,
    tiktok_request_schema,
    tiktok_request_validator,
)
from processor.transform import Transformer, load_pipeline
from tests.conftest import ROOT, SCHEMAS

WriteConfig = Callable[..., Path]
CRM_EXAMPLE = ROOT / "config" / "examples" / "crm-leads.yaml"
NOW = 1_767_225_600
CRM_SET = "7312345678901234567"
APP_ID = "7123456789012345678"
OFFLINE_SET = "7234567890123456789"
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"


def a_mapping(source: str | None = None, **extra: Any) -> dict[str, Any]:
    """A mapping of topic ``src.<source>`` with only event_time, plus ``extra``."""
    mapping: dict[str, Any] = {
        "name": f"m-{(source or 'default').lower()}",
        "topic": f"src.{source or 'default'}",
        "event": "Purchase",
        "fields": {"event_time": "ts"},
    }
    if source is not None:
        mapping["event_source"] = source
    fields = extra.pop("fields", {})
    mapping.update(extra)
    mapping["fields"].update(fields)
    return mapping


def problems_of(raw: dict[str, Any], write_config: WriteConfig) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write_config(raw), clock=lambda: NOW, environ={})
    return list(caught.value.problems)


def pipeline_with(
    raw: dict[str, Any], write_config: WriteConfig, *mappings: dict[str, Any]
) -> Transformer:
    raw["mappings"] += list(mappings)
    _, transformer, _ = load_pipeline(write_config(raw), clock=lambda: NOW, environ={})
    return transformer


def mapped(transformer: Transformer, topic: str, record: dict[str, Any]) -> Any:
    result = transformer.transform(topic, 0, 7, json.dumps(record).encode())
    assert not result.rejected, result.rejected
    (event,) = result.events
    return event


# -- configuration -------------------------------------------------------------------------------


def test_a_mapping_without_a_source_is_web_with_the_default_pixel(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    config = load_config(write_config(example_raw), environ={})
    assert {(m.event_source, m.event_source_id) for m in config.mappings} == {("web", None)}
    transformer = pipeline_with(example_raw, write_config, a_mapping())
    event = mapped(transformer, "src.default", {"ts": NOW})
    assert (event.event_source, event.event_source_id) == ("web", "D34FV3JC77U1PDQ72P1G")


def test_pixel_code_is_a_web_mappings_event_source_id(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    by_pixel = a_mapping(pixel_code="C0THERPIXEL0000000")
    by_id = a_mapping("web", event_source_id="C0THERPIXEL0000001", topic="src.web2", name="m-2")
    transformer = pipeline_with(example_raw, write_config, by_pixel, by_id)
    first = mapped(transformer, "src.default", {"ts": NOW})
    second = mapped(transformer, "src.web2", {"ts": NOW})
    assert (first.event_source, first.event_source_id) == ("web", "C0THERPIXEL0000000")
    assert (second.event_source, second.event_source_id) == ("web", "C0THERPIXEL0000001")


def test_pixel_code_and_event_source_id_together_are_refused(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"].append(
        a_mapping(pixel_code="C0THERPIXEL0000000", event_source_id="C0THERPIXEL0000001")
    )
    assert problems_of(example_raw, write_config) == [
        "mappings[4].pixel_code: give event_source_id or pixel_code, not both "
        "(pixel_code is a web mapping's event_source_id)"
    ]


@pytest.mark.parametrize(
    ("source", "what"),
    [("app", "TikTok app id"), ("offline", "offline event set id"), ("crm", "CRM event set id")],
)
def test_a_source_other_than_web_needs_its_event_source_id(
    example_raw: dict[str, Any], write_config: WriteConfig, source: str, what: str
) -> None:
    event = "QualifiedLead" if source == "crm" else "Purchase"
    example_raw["mappings"].append(a_mapping(source, event=event))
    assert problems_of(example_raw, write_config) == [
        f"mappings[4].event_source_id: required for event_source {source} (the {what})"
    ]


def test_pixel_code_is_for_web_only(example_raw: dict[str, Any], write_config: WriteConfig) -> None:
    example_raw["mappings"].append(a_mapping("app", pixel_code=APP_ID))
    assert problems_of(example_raw, write_config) == [
        "mappings[4].pixel_code: only for event_source web; give the TikTok app id as "
        "event_source_id"
    ]


def test_an_unknown_event_source_is_refused_listing_every_source(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"].append(a_mapping("CRM", event_source_id=CRM_SET))
    assert problems_of(example_raw, write_config) == [
        "mappings[4].event_source: must be one of web, app, offline, crm"
    ]


def test_an_event_source_id_must_look_like_one(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"].append(a_mapping("crm", event="QualifiedLead", event_source_id=7))
    (problem,) = problems_of(example_raw, write_config)
    assert problem.startswith("mappings[4].event_source_id: ")


@pytest.mark.parametrize(
    ("source", "field", "expected"),
    [
        ("web", "lead.lead_id", "not allowed for event_source web; TikTok takes it for crm only"),
        ("offline", "lead.lead_event_source", "TikTok takes it for crm only"),
        ("app", "user.ttp", "not allowed for event_source app; TikTok takes it for web only"),
        ("crm", "user.ttp", "TikTok takes it for web only"),
        ("crm", "page.url", "not allowed for event_source crm; TikTok takes it for web only"),
        ("app", "page.referrer", "TikTok takes it for web only"),
        ("web", "user.idfa", "not allowed for event_source web; TikTok takes it for app only"),
        ("crm", "user.idfv", "TikTok takes it for app only"),
        ("offline", "user.gaid", "TikTok takes it for app only"),
        ("web", "user.att_status", "TikTok takes it for app only"),
        ("offline", "limited_data_use", "TikTok takes it for web and app only"),
        ("crm", "limited_data_use", "TikTok takes it for web and app only"),
    ],
)
def test_a_target_its_source_does_not_take_is_refused_naming_it(
    example_raw: dict[str, Any], write_config: WriteConfig, source: str, field: str, expected: str
) -> None:
    spec: Any = {"const": False} if field == "limited_data_use" else "x"
    ids = {"web": "C0THERPIXEL0000000", "app": APP_ID, "offline": OFFLINE_SET, "crm": CRM_SET}
    event = "QualifiedLead" if source == "crm" else "Purchase"
    mapping = a_mapping(source, event=event, event_source_id=ids[source], fields={field: spec})
    example_raw["mappings"].append(mapping)
    (problem,) = problems_of(example_raw, write_config)
    assert problem.startswith(f"mappings[4].fields.{field}: ")
    assert expected in problem


def test_a_mapping_level_limited_data_use_is_checked_too(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    mapping = a_mapping("crm", event="QualifiedLead", event_source_id=CRM_SET)
    mapping["limited_data_use"] = True
    example_raw["mappings"].append(mapping)
    assert problems_of(example_raw, write_config) == [
        "mappings[4].limited_data_use: not allowed for event_source crm; "
        "TikTok takes it for web and app only"
    ]


def test_offline_takes_standard_events_and_crm_custom_ones(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"] += [
        a_mapping("offline", event="StoreVisit", event_source_id=OFFLINE_SET),
        a_mapping("crm", event="Lead", event_source_id=CRM_SET),
    ]
    assert problems_of(example_raw, write_config) == [
        "mappings[4].event: event_source offline takes standard events only, "
        "and this is a custom event name",
        "mappings[5].event: event_source crm takes custom events only, "
        "and this is a standard event name",
    ]


def test_every_source_problem_of_a_file_is_reported_at_once(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"] += [
        a_mapping("crm", event="Purchase", fields={"page.url": "u", "user.idfa": "i"}),
        a_mapping("web", name="m-web", fields={"lead.lead_id": "l"}),
    ]
    assert sorted(problems_of(example_raw, write_config)) == [
        "mappings[4].event: event_source crm takes custom events only, "
        "and this is a standard event name",
        "mappings[4].event_source_id: required for event_source crm (the CRM event set id)",
        "mappings[4].fields.page.url: not allowed for event_source crm; "
        "TikTok takes it for web only",
        "mappings[4].fields.user.idfa: not allowed for event_source crm; "
        "TikTok takes it for app only",
        "mappings[5].fields.lead.lead_id: not allowed for event_source web; "
        "TikTok takes it for crm only",
    ]


def test_what_every_source_takes_compiles(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    everywhere = {
        "user.email": "email",
        "user.ip": "ip",
        "properties.value": "value",
        "properties.contents[0].content_id": "sku",
    }
    pipeline_with(
        example_raw,
        write_config,
        a_mapping("web", fields={**everywhere, "user.ttp": "t", "page.url": "u"}),
        a_mapping("app", event_source_id=APP_ID, fields={**everywhere, "user.idfa": "i"}),
        a_mapping("offline", event_source_id=OFFLINE_SET, fields=everywhere),
        a_mapping("crm", event="QualifiedLead", event_source_id=CRM_SET, fields=everywhere),
    )


# -- mapped events ------------------------------------------------------------------------------


def test_an_app_mapping_sends_device_ids_as_given(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    app = a_mapping(
        "app",
        event_source_id=APP_ID,
        limited_data_use=False,
        fields={
            "user.idfa": "device.idfa",
            "user.idfv": "device.idfv",
            "user.gaid": "device.gaid",
            "user.att_status": {"lookup": "device.att", "table": {"3": "AUTHORIZED"}},
            "user.locale": "device.locale",
        },
    )
    transformer = pipeline_with(example_raw, write_config, app)
    record = {
        "ts": NOW,
        "device": {
            "idfa": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
            "idfv": "9F1B2C3D-4E5F-4A6B-8C7D-0E1F2A3B4C5D",
            "gaid": "38400000-8cf0-11bd-b23e-10b96e40000d",
            "att": "3",
            "locale": "en-GB",
        },
    }
    event = mapped(transformer, "src.app", record)
    assert (event.event_source, event.event_source_id) == ("app", APP_ID)
    assert event.payload["user"] == {
        "idfa": "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        "idfv": "9F1B2C3D-4E5F-4A6B-8C7D-0E1F2A3B4C5D",
        "gaid": "38400000-8cf0-11bd-b23e-10b96e40000d",
        "att_status": "AUTHORIZED",
        "locale": "en-GB",
    }
    assert event.payload["limited_data_use"] is False
    body = request_body(batch_key(event), [event.payload])
    tiktok_request_validator()(body)


def test_an_att_status_tiktok_does_not_know_is_rejected_by_the_output_schema(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    app = a_mapping("app", event_source_id=APP_ID, fields={"user.att_status": "att"})
    transformer = pipeline_with(example_raw, write_config, app)
    result = transformer.transform("src.app", 0, 7, json.dumps({"ts": NOW, "att": "yes"}).encode())
    (rejection,) = result.rejected
    assert "user.att_status" in rejection.reason


def test_the_crm_example_makes_a_crm_lead_event(tmp_path: Path) -> None:
    raw = yaml.safe_load(CRM_EXAMPLE.read_text())
    raw["schemas_dir"] = str(SCHEMAS)
    path = tmp_path / "crm.yaml"
    path.write_text(yaml.safe_dump(raw))
    _, transformer, _ = load_pipeline(path, clock=lambda: NOW, environ={})
    record = {
        "change_id": "chg-1",
        "updated_at": NOW - 60,
        "lead": {"id": 7300000000000000001, "stage": "qualified"},
        "contact": {"email": "Jane.Doe@example.com ", "phone": "+447700900123"},
    }
    event = mapped(transformer, "crm.leads", record)
    assert event.mapping == "crm-qualified-leads"
    assert batch_key(event) == BatchKey("crm", CRM_SET, None)
    assert event.payload["lead"] == {
        "lead_id": "7300000000000000001",
        "lead_event_source": "HubSpot",
    }
    assert event.payload["event"] == "QualifiedLead"
    body = request_body(batch_key(event), [event.payload])
    assert (body["event_source"], body["event_source_id"]) == ("crm", CRM_SET)
    assert check_body(body, tiktok_request_validator()) is None


# -- request bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "source_id"),
    [("web", "D34FV3JC77U1PDQ72P1G"), ("app", APP_ID), ("offline", OFFLINE_SET), ("crm", CRM_SET)],
)
def test_a_request_names_its_batch_keys_source_and_id(source: str, source_id: str) -> None:
    event = {"event": "Purchase", "event_time": NOW, "event_id": "e-1"}
    body = request_body(BatchKey(source, source_id, "TEST1"), [event], "Acme")
    assert body == {
        "event_source": source,
        "event_source_id": source_id,
        "test_event_code": "TEST1",
        "partner_name": "Acme",
        "data": [event],
    }
    assert "test_event_code" not in request_body(BatchKey(source, source_id, None), [event])


# -- the schema's rules, as the sandbox applies them ---------------------------------------------


def a_request(source: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "QualifiedLead" if source == "crm" else "Purchase",
        "event_time": NOW,
        "event_id": "e-1",
        "user": {"email": SHA},
    }
    for path, value in fields.items():
        section, _, key = path.partition(".")
        if key:
            event.setdefault(section, {})[key] = value
        else:
            event[section] = value
    return {"event_source": source, "event_source_id": CRM_SET, "data": [event]}


@pytest.mark.parametrize(
    ("source", "fields"),
    [
        ("web", {"user.ttp": "t", "page.url": "https://x.example/", "limited_data_use": True}),
        ("app", {"user.idfa": "A", "user.att_status": "DENIED", "limited_data_use": False}),
        ("offline", {"properties.shop_id": "store-1", "user.external_id": SHA}),
        ("crm", {"lead.lead_id": "7300000000000000001", "lead.lead_event_source": "Salesforce"}),
    ],
)
def test_the_sandbox_accepts_what_each_source_takes(source: str, fields: dict[str, Any]) -> None:
    assert check_body(a_request(source, **fields), tiktok_request_validator()) is None


@pytest.mark.parametrize(
    ("source", "field", "value", "message"),
    [
        ("web", "lead.lead_id", "1", "data[0].lead: not allowed for event_source web; TikTok takes it for crm only"),
        ("web", "user.idfa", "A", "data[0].user.idfa: not allowed for event_source web; TikTok takes it for app only"),
        ("app", "user.ttp", "t", "data[0].user.ttp: not allowed for event_source app; TikTok takes it for web only"),
        ("app", "page.url", "u", "data[0].page: not allowed for event_source app; TikTok takes it for web only"),
        ("app", "lead.lead_id", "1", "data[0].lead: not allowed for event_source app"),
        ("offline", "limited_data_use", False, "data[0].limited_data_use: not allowed for event_source offline; TikTok takes it for web and app only"),
        ("offline", "user.gaid", "g", "data[0].user.gaid: not allowed for event_source offline"),
        ("crm", "page.referrer", "r", "data[0].page: not allowed for event_source crm"),
        ("crm", "user.att_status", "DENIED", "data[0].user.att_status: not allowed for event_source crm"),
        ("crm", "event", "Lead", "data[0].event: event_source crm takes custom events only"),
        ("offline", "event", "StoreVisit", "data[0].event: event_source offline takes standard events only"),
    ],
)  # fmt: skip
def test_the_sandbox_refuses_what_a_source_does_not_take_naming_the_field(
    source: str, field: str, value: Any, message: str
) -> None:
    body = a_request(source, **{field: value})
    rejection = check_body(body, tiktok_request_validator())
    assert rejection is not None
    assert rejection.code == Code.PARAM_ERROR
    assert rejection.message.startswith(f"Invalid value for {message}")
    # The schema says the same on its own (only less readably).
    with pytest.raises(SchemaViolation) as caught:
        tiktok_request_validator()(body)
    assert caught.value.path == message.split(":", maxsplit=1)[0]


def test_the_source_check_leaves_malformed_requests_to_the_schema() -> None:
    assert check_source({"event_source": "tv", "data": [{"lead": {}}]}) is None
    assert check_source({"event_source": "web", "data": "nope"}) is None
    assert check_source({"event_source": "web", "data": [None, {"event": 3}]}) is None


def test_the_first_bad_event_is_the_one_named() -> None:
    body = a_request("web")
    body["data"] += [dict(body["data"][0], event_id="e-2", lead={"lead_id": "1"})]
    rejection = check_source(body)
    assert rejection is not None
    assert rejection.message.startswith("Invalid value for data[1].lead:")


# -- one statement of the rules ------------------------------------------------------------------


def test_the_schemas_standard_events_are_the_compilers() -> None:
    assert standard_events() == STANDARD_EVENTS | LEGACY_EVENTS | set(RENAMED_EVENTS)


def test_the_config_schema_lists_the_request_schemas_sources() -> None:
    config_schema = json.loads((SCHEMAS / "config.schema.json").read_text())
    mapping = config_schema["definitions"]["mapping"]["properties"]
    assert mapping["event_source"]["enum"] == list(source_rules())
    assert tiktok_request_schema()["properties"]["event_source"]["enum"] == list(source_rules())


def test_every_forbidden_field_is_a_field_of_the_event_schema() -> None:
    definitions = tiktok_request_schema()["definitions"]
    for rules in source_rules().values():
        for field in rules.forbidden:
            section, _, key = field.partition(".")
            assert section in definitions["event"]["properties"], field
            if key:
                assert key in definitions[section]["properties"], field


def test_every_mappable_user_field_is_in_the_output_schema() -> None:
    user = tiktok_request_schema()["definitions"]["user"]["properties"]
    assert set(SECTION_FIELDS["user"]) <= set(user)


@pytest.mark.parametrize(("test_code", "partner"), [(None, None), ("TEST1", "Acme")])
@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_a_body_from_encoded_events_is_the_body_of_their_payloads(
    test_code: str | None, partner: str | None, count: int
) -> None:
    key = BatchKey("web", "D34FV3JC77U1PDQ72P1G", test_code)
    events = [{"event": "Lead", "event_time": NOW, "event_id": f"e-{i}"} for i in range(count)]
    encoded = encode_request(key, [orjson.dumps(e) for e in events], partner)
    assert encoded == orjson.dumps(request_body(key, events, partner))
    assert orjson.loads(encoded)["data"] == events
