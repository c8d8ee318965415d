"""Mapping presets (processor/presets): every shipped example of Segment (and RudderStack),
Snowplow and GA4 records becomes, through ``preview --json`` and a mapping that only names
its preset, request bodies the sandbox accepts, with the expected events and hashes; the
overrides change what they say; mistakes are named; ``check-config`` prints the expansion;
the sample traffic of each shape maps without a rejection."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from processor.cli import main
from processor.errors import ConfigError
from processor.presets import expand, load_preset, preset_names
from processor.sample import SHAPE_TOPICS, generate
from processor.sandbox.state import SandboxState, TrackRequest
from processor.sandbox.validation import check_body
from processor.schemas import tiktok_request_predicate, tiktok_request_validator
from processor.transform import Transformer, load_pipeline
from processor.types import Stage
from tests.conftest import EXAMPLES_NOW, ROOT, SCHEMAS

WriteConfig = Callable[..., Path]
PIXEL = "D34FV3JC77U1PDQ72P1G"
TOKEN = "presets-test-token"
PRESETS = ("segment", "snowplow", "ga4")
EXAMPLES = SCHEMAS / "presets" / "examples"
CONFIG_EXAMPLES = ROOT / "config" / "examples"

# The people of the examples, as TikTok hashes them (the normalised text).
JANE = {"email": "jane.doe@example.com", "phone": "+447700900123", "external_id": "user-8841"}
ALICE = {"email": "alice_abc@gmail.com", "phone": "+12133734253", "external_id": "user_123"}
LEAD = {"email": "lead.form@example.org", "phone": "+14155550142"}
SEGMENT_VISITOR = {"external_id": "5f0c8e2b-7a4e-4c1a-9d3e-2b1f0a9c8d7e"}
SNOWPLOW_VISITOR = {"external_id": "6c8e0a2c-4d5f-4b7a-9c1e-0f2a4c6e8a15"}
IPHONE_CLIENT = {"external_id": "1786344950.1767225000"}
DESKTOP_CLIENT = {"external_id": "2094417661.1767220000"}

#: Each shipped example → the TikTok events it becomes (none: filtered) and the plain
#: text of each hashed customer field the events carry. A new example must be added here.
EXPECTED: dict[str, tuple[list[str], dict[str, str]]] = {
    "segment.v1/button_clicked.json": (["ClickButton"], SEGMENT_VISITOR),
    "segment.v1/checkout_started.json": (
        ["InitiateCheckout"],
        {"email": ALICE["email"], "external_id": ALICE["external_id"]},
    ),
    "segment.v1/form_submitted_lead.json": (
        ["Lead"],
        {**LEAD, "external_id": "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a"},
    ),
    "segment.v1/identify_not_an_event.json": ([], {}),
    "segment.v1/lead_generated.json": (
        ["Lead"],
        {"email": LEAD["email"], "external_id": "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a"},
    ),
    "segment.v1/order_completed.json": (["Purchase"], ALICE),
    "segment.v1/page_not_an_event.json": ([], {}),
    "segment.v1/payment_info_entered.json": (
        ["AddPaymentInfo"],
        {"external_id": ALICE["external_id"]},
    ),
    "segment.v1/product_added_to_wishlist.json": (["AddToWishlist"], ALICE),
    "segment.v1/product_removed_not_in_table.json": ([], {}),
    "segment.v1/product_viewed_from_tiktok_ad.json": (["ViewContent"], SEGMENT_VISITOR),
    "segment.v1/products_searched.json": (["Search"], SEGMENT_VISITOR),
    "segment.v1/rudderstack_product_added.json": (["AddToCart"], JANE),
    "segment.v1/rudderstack_sdk_order_completed.json": (["Purchase"], JANE),
    "segment.v1/signed_up.json": (
        ["CompleteRegistration"],
        {**JANE, "first_name": "jane", "last_name": "doe", "zip_code": "sw1a1aa"},
    ),
    "segment.v1/subscription_started.json": (["Subscribe"], JANE),
    "segment.v1/trial_started.json": (["StartTrial"], JANE),
    "snowplow.v1/add_to_cart_from_tiktok_ad.json": (["AddToCart"], SNOWPLOW_VISITOR),
    "snowplow.v1/button_click.json": (["ClickButton"], SNOWPLOW_VISITOR),
    "snowplow.v1/page_view_not_an_event.json": ([], {}),
    "snowplow.v1/robot_add_to_cart_filtered.json": ([], {}),
    "snowplow.v1/site_search.json": (["Search"], SNOWPLOW_VISITOR),
    "snowplow.v1/struct_event_not_an_event.json": ([], {}),
    "snowplow.v1/submit_form_lead.json": (["Lead"], {"external_id": JANE["external_id"]}),
    "snowplow.v1/transaction_item_not_an_event.json": ([], {}),
    "snowplow.v1/transaction_purchase.json": (["Purchase"], {"external_id": "user_123"}),
    "ga4.v1/add_to_wishlist.json": (["AddToWishlist"], IPHONE_CLIENT),
    "ga4.v1/consent_denied_filtered.json": ([], {}),
    "ga4.v1/funnel_three_events.json": (
        ["AddToCart", "InitiateCheckout", "AddPaymentInfo"],
        {"external_id": ALICE["external_id"]},
    ),
    "ga4.v1/generate_lead_plain_contact.json": (["Lead"], {**LEAD, **DESKTOP_CLIENT}),
    "ga4.v1/page_view_and_view_item_from_tiktok_ad.json": (["ViewContent"], IPHONE_CLIENT),
    "ga4.v1/purchase_prehashed_user_data.json": (
        ["Purchase"],
        {**JANE, "first_name": "jane", "last_name": "doe", "zip_code": "sw1a2aa"},
    ),
    "ga4.v1/search.json": (["Search"], DESKTOP_CLIENT),
    "ga4.v1/session_start_not_an_event.json": ([], {}),
    "ga4.v1/sign_up_prehashed_upper_case.json": (
        ["CompleteRegistration"],
        {"email": JANE["email"], "external_id": JANE["external_id"]},
    ),
    "ga4.v1/view_search_results.json": (["Search"], IPHONE_CLIENT),
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*/*.json"))


def name_of(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def preset_of(path: Path) -> str:
    return path.parent.name.split(".")[0]


def config_raw(preset: str, **overrides: Any) -> dict[str, Any]:
    """A configuration whose one mapping names ``preset`` (with ``overrides``)."""
    mapping: dict[str, Any] = {"name": "site", "topic": SHAPE_TOPICS[preset], "preset": preset}
    mapping.update(overrides)
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:9092", "group_id": "presets"},
        "tiktok": {"pixel_code": PIXEL},
        "pii": {"default_phone_region": "US"},
        "mappings": [mapping],
    }


def preview_json(
    capsys: pytest.CaptureFixture[str], config: Path, topic: str, record: Path
) -> list[dict[str, Any]]:
    """``tiktok-events preview --json`` of ``record``, one object per outcome."""
    capsys.readouterr()
    code = main(
        ["preview", "--json", "--config", str(config), "--topic", topic,
         "--now", str(EXAMPLES_NOW), str(record)]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


def sandbox_accepts(body: dict[str, Any]) -> None:
    """The sandbox's verdict on a request body: its validation module's checks, called as
    the server's state calls them, then the state itself answering the request."""
    rejection = check_body(body, tiktok_request_validator(), tiktok_request_predicate())
    assert rejection is None, rejection
    state = SandboxState(tokens=[TOKEN], clock=lambda: EXAMPLES_NOW)
    reply = state.track(TrackRequest(token=TOKEN.encode(), body=orjson.dumps(body)))
    assert orjson.loads(reply.body)["code"] == 0, reply.body
    assert state.stats()["events"]["accepted"] == len(body["data"])


def events_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of every mapped body, after checking each is accepted by the sandbox."""
    assert not [line for line in lines if line["outcome"] == "rejected"], lines
    events = []
    for line in lines:
        if line["outcome"] == "mapped":
            assert line["body"]["event_source_id"] == PIXEL
            sandbox_accepts(line["body"])
            events += line["body"]["data"]
    return events


def digest_of(value: str | list[str]) -> str:
    """A user field's digest (a list of one, as a list of digests arrives, is unwrapped)."""
    if isinstance(value, list):
        assert len(value) == 1
        return value[0]
    return value


@pytest.fixture
def preset_config(write_config: WriteConfig) -> Callable[..., Path]:
    def write(preset: str, **overrides: Any) -> Path:
        return write_config(config_raw(preset, **overrides), f"{preset}.yaml")

    return write


def pipeline(write_config: WriteConfig, raw: dict[str, Any]) -> Transformer:
    _, transformer, _ = load_pipeline(write_config(raw), clock=lambda: EXAMPLES_NOW, environ={})
    return transformer


def mapped(transformer: Transformer, topic: str, record: dict[str, Any], offset: int = 0) -> Any:
    result = transformer.transform(topic, 0, offset, orjson.dumps(record))
    assert not result.rejected, [f"{r.stage}: {r.reason}" for r in result.rejected]
    return result


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return document


# --- the presets and their examples ----------------------------------------------------


def test_the_shipped_presets_are_the_three_the_configuration_schema_allows() -> None:
    schema = json.loads((SCHEMAS / "config.schema.json").read_text())
    allowed = schema["definitions"]["mapping"]["properties"]["preset"]["enum"]
    assert preset_names() == tuple(sorted(PRESETS)) == tuple(allowed)


def test_every_example_is_expected_and_every_preset_has_examples() -> None:
    assert sorted(name_of(p) for p in example_files()) == sorted(EXPECTED)
    for preset in PRESETS:
        kinds = [events for name, (events, _) in EXPECTED.items() if name.startswith(preset)]
        assert [] in kinds, f"{preset} needs an example that is filtered"
        table = set(load_preset(preset).events.values())
        assert table == {e for events in kinds for e in events}, f"{preset}: an event lacks one"


@pytest.mark.parametrize("path", example_files(), ids=name_of)
def test_example_validates_against_its_presets_schema(path: Path) -> None:
    preset = load_preset(preset_of(path))
    schema = json.loads((SCHEMAS / preset.schema).read_text())
    assert Path(preset.schema).stem == path.parent.name  # examples/<schema>/, as everywhere
    jsonschema.validate(json.loads(path.read_text()), schema)
    assert "https://" in schema["description"], "a preset's schema cites its specification"


@pytest.mark.parametrize("path", example_files(), ids=name_of)
def test_preview_of_example_gives_sandbox_accepted_bodies_with_its_events_and_hashes(
    path: Path, preset_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    preset = preset_of(path)
    lines = preview_json(capsys, preset_config(preset), SHAPE_TOPICS[preset], path)
    expected_events, plain = EXPECTED[name_of(path)]
    events = events_of(lines)
    assert sorted(e["event"] for e in events) == sorted(expected_events)
    if not expected_events:
        assert [line["outcome"] for line in lines] == ["filtered"]
    for event in events:
        user = event["user"]
        assert {field: digest_of(user[field]) for field in plain if field in user} == {
            field: sha256(text) for field, text in plain.items()
        }
        assert user.get("user_agent"), "every example carries the browser's user agent"


# --- what the presets read, example by example -------------------------------------------


def test_rudderstack_messages_map_with_preset_segment(write_config: WriteConfig) -> None:
    transformer = pipeline(write_config, config_raw("segment"))
    forwarded = load("segment.v1/rudderstack_product_added.json")
    assert forwarded["context"]["library"]["name"].startswith("RudderLabs")
    assert "ip" not in forwarded["context"]
    (event,) = mapped(transformer, "segment.events", forwarded).events
    payload = event.payload
    assert payload["event"] == "AddToCart"
    assert payload["event_id"] == forwarded["messageId"]
    assert payload["event_time"] == 1_767_225_662  # timestamp, the server's estimate
    assert payload["user"]["ip"] == forwarded["request_ip"]
    assert payload["user"]["ttclid"] == "E.C.P.Rudder42"
    assert payload["properties"]["contents"] == [
        {
            "content_id": "507f1f77bcf86cd799439012",
            "content_name": "Ridge Boots",
            "content_category": "Shoes",
            "brand": "Acme",
            "price": 120,
            "quantity": 2,
        }
    ]
    # Straight from the SDK: no timestamp, no IP; originalTimestamp is the time.
    sdk = load("segment.v1/rudderstack_sdk_order_completed.json")
    (event,) = mapped(transformer, "segment.events", sdk).events
    assert event.payload["event_time"] == 1_767_225_730
    assert "ip" not in event.payload["user"]
    assert event.payload["properties"]["value"] == 240  # revenue, before total


def test_segment_products_become_contents_and_the_order_its_id(write_config: WriteConfig) -> None:
    transformer = pipeline(write_config, config_raw("segment"))
    order = load("segment.v1/order_completed.json")
    (event,) = mapped(transformer, "segment.events", order).events
    properties = event.payload["properties"]
    assert properties["order_id"] == "50314b8e9bcf000000000000"
    assert properties["currency"] == "USD"
    assert properties["value"] == 289.99
    assert properties["content_type"] == "product"
    assert [c["content_id"] for c in properties["contents"]] == [
        p["product_id"] for p in order["properties"]["products"]
    ]


def test_snowplow_reads_the_self_describing_event_and_legacy_transaction(
    write_config: WriteConfig,
) -> None:
    transformer = pipeline(write_config, config_raw("snowplow"))
    cart = load("snowplow.v1/add_to_cart_from_tiktok_ad.json")
    (event,) = mapped(transformer, "snowplow.enriched", cart).events
    assert event.payload["event_time"] == 1_767_225_610  # derived_tstamp
    assert event.payload["user"]["ttclid"] == "E.C.P.Snow123"
    assert event.payload["properties"]["contents"] == [
        {
            "content_id": "sku-1001",
            "content_name": "Trail Jacket",
            "content_category": "Outerwear",
            "price": 49.99,
            "quantity": 1,
        }
    ]
    (event,) = mapped(transformer, "snowplow.enriched", load("snowplow.v1/site_search.json")).events
    assert event.payload["properties"]["search_string"] == "waterproof jacket"
    purchase = load("snowplow.v1/transaction_purchase.json")
    (event,) = mapped(transformer, "snowplow.enriched", purchase).events
    assert event.payload["properties"] == {
        "value": 294.99,
        "currency": "USD",
        "order_id": "ord-2026-0042",
    }


def test_snowplow_structured_event_is_mapped_by_a_narrowed_use_of_the_preset(
    write_config: WriteConfig,
) -> None:
    raw = config_raw("snowplow")
    raw["mappings"].append(
        {
            "name": "struct-trials",
            "topic": "snowplow.enriched",
            "preset": "snowplow",
            "events": {"event": "StartTrial"},
            "when": {"field": "se_action", "equals": "start-trial"},
        }
    )
    transformer = pipeline(write_config, raw)
    struct = load("snowplow.v1/struct_event_not_an_event.json")
    assert mapped(transformer, "snowplow.enriched", struct).filtered
    trial = dict(struct, se_action="start-trial", se_label="pro", se_value=20)
    (event,) = mapped(transformer, "snowplow.enriched", trial).events
    assert (event.mapping, event.event) == ("struct-trials.start_trial", "StartTrial")
    assert event.payload["properties"] == {"value": 20, "description": "pro"}
    cart = load("snowplow.v1/add_to_cart_from_tiktok_ad.json")
    assert [e.mapping for e in mapped(transformer, "snowplow.enriched", cart).events] == [
        "site.add_to_cart"
    ]


def test_a_ga4_body_of_three_events_gives_three_events_with_distinct_stable_ids(
    write_config: WriteConfig,
) -> None:
    transformer = pipeline(write_config, config_raw("ga4"))
    body = load("ga4.v1/funnel_three_events.json")
    first = mapped(transformer, "ga4.mp", body, offset=41).events
    again = mapped(transformer, "ga4.mp", body, offset=41).events
    later = mapped(transformer, "ga4.mp", body, offset=42).events
    ids = {e.event: e.payload["event_id"] for e in first}
    assert ids == {
        "AddToCart": "ga4.mp-0-41-0",
        "InitiateCheckout": "ga4.mp-0-41-1",
        "AddPaymentInfo": "ga4.mp-0-41-2",
    }
    assert [e.payload["event_id"] for e in again] == [e.payload["event_id"] for e in first]
    assert not {e.payload["event_id"] for e in later} & set(ids.values())
    # Each event keeps its own time (timestamp_micros of the entry, not of the body).
    assert sorted(e.payload["event_time"] for e in first) == [
        1_767_225_660,
        1_767_225_675,
        1_767_225_690,
    ]


def test_a_ga4_event_with_an_event_id_param_keeps_it(write_config: WriteConfig) -> None:
    transformer = pipeline(write_config, config_raw("ga4"))
    body = load("ga4.v1/purchase_prehashed_user_data.json")
    (event,) = mapped(transformer, "ga4.mp", body).events
    assert event.payload["event_id"] == "purchase-ord-2026-0042"
    assert event.payload["properties"]["order_id"] == "ord-2026-0042"
    # Digests pass through as the lists they came in.
    assert event.payload["user"]["email"] == [sha256(JANE["email"])]


def test_ga4_prefers_a_plain_email_to_googles_digest(write_config: WriteConfig) -> None:
    transformer = pipeline(write_config, config_raw("ga4"))
    body = load("ga4.v1/sign_up_prehashed_upper_case.json")
    body["user_data"]["email"] = " John.Smith@Gmail.com "
    (event,) = mapped(transformer, "ga4.mp", body).events
    assert event.payload["user"]["email"] == sha256("john.smith@gmail.com")


def test_ga4_timestamp_micros_as_text_is_understood(write_config: WriteConfig) -> None:
    transformer = pipeline(write_config, config_raw("ga4"))
    body = load("ga4.v1/search.json")
    body["timestamp_micros"] = str(body["timestamp_micros"])
    (event,) = mapped(transformer, "ga4.mp", body).events
    assert event.payload["event_time"] == 1_767_225_607


# --- the input schemas: strict about what the mapping needs, permissive elsewhere -------


@pytest.mark.parametrize(
    ("preset", "example", "change", "path"),
    [
        ("segment", "order_completed.json", lambda d: d.pop("messageId"), "(record)"),
        ("segment", "order_completed.json", lambda d: d.pop("event"), "(record)"),
        (
            "segment",
            "order_completed.json",
            lambda d: d["properties"]["products"][0].update(price=-1),
            "properties.products[0].price",
        ),
        (
            "snowplow",
            "transaction_purchase.json",
            lambda d: d.pop("tr_total"),
            "(record)",
        ),
        (
            "ga4",
            "search.json",
            lambda d: d.pop("timestamp_micros"),
            "(record)",
        ),
        (
            "ga4",
            "purchase_prehashed_user_data.json",
            lambda d: d["events"][0]["params"].update(currency="dollars"),
            "events[0].params.currency",
        ),
    ],
    ids=["segment-no-id", "segment-track-without-event", "segment-negative-price",
         "snowplow-transaction-without-total", "ga4-no-time", "ga4-bad-currency"],
)  # fmt: skip
def test_a_record_missing_what_the_mapping_needs_is_rejected_at_input_schema(
    write_config: WriteConfig,
    preset: str,
    example: str,
    change: Callable[[dict[str, Any]], Any],
    path: str,
) -> None:
    transformer = pipeline(write_config, config_raw(preset))
    document = load(f"{preset}.v1/{example}")
    change(document)
    result = transformer.transform(SHAPE_TOPICS[preset], 0, 0, orjson.dumps(document))
    (rejection,) = result.rejected
    assert rejection.stage == Stage.INPUT_SCHEMA
    assert rejection.reason.startswith(f"{path}:"), rejection.reason


def test_properties_of_events_outside_the_table_are_not_checked(
    write_config: WriteConfig,
) -> None:
    transformer = pipeline(write_config, config_raw("segment"))
    removed = load("segment.v1/product_removed_not_in_table.json")
    assert removed["properties"]["value"] < 0
    assert mapped(transformer, "segment.events", removed).filtered
    ga4 = pipeline(write_config, config_raw("ga4"))
    refund = load("ga4.v1/search.json")
    refund["events"] = [{"name": "refund", "params": {"value": -20, "currency": "dollars"}}]
    assert mapped(ga4, "ga4.mp", refund).filtered


# --- overrides ---------------------------------------------------------------------------


def test_events_override_adds_an_entry_and_null_removes_one(write_config: WriteConfig) -> None:
    raw = config_raw("segment", events={"Demo Requested": "Lead", "Order Completed": None})
    transformer = pipeline(write_config, raw)
    order = load("segment.v1/order_completed.json")
    assert mapped(transformer, "segment.events", order).filtered
    demo = dict(load("segment.v1/form_submitted_lead.json"), event="Demo Requested")
    (event,) = mapped(transformer, "segment.events", demo).events
    assert (event.mapping, event.event) == ("site.lead", "Lead")
    checkout = load("segment.v1/checkout_started.json")
    assert [e.event for e in mapped(transformer, "segment.events", checkout).events] == [
        "InitiateCheckout"
    ]


def test_events_override_can_send_a_source_event_as_another_tiktok_event(
    write_config: WriteConfig,
) -> None:
    transformer = pipeline(write_config, config_raw("ga4", events={"sign_up": "Subscribe"}))
    body = load("ga4.v1/sign_up_prehashed_upper_case.json")
    (event,) = mapped(transformer, "ga4.mp", body).events
    assert (event.mapping, event.event) == ("site.subscribe", "Subscribe")


def test_fields_override_replaces_and_null_removes_a_field(write_config: WriteConfig) -> None:
    raw = config_raw(
        "segment",
        fields={"user.external_id": "userId", "user.ip": None, "properties.description": "event"},
    )
    transformer = pipeline(write_config, raw)
    anonymous = load("segment.v1/button_clicked.json")
    (event,) = mapped(transformer, "segment.events", anonymous).events
    assert "external_id" not in event.payload["user"]  # anonymousId is no longer used
    assert "ip" not in event.payload["user"]
    # The user's field is laid over the preset's event-specific one too.
    assert event.payload["properties"]["description"] == "Button Clicked"
    known = load("segment.v1/order_completed.json")
    (event,) = mapped(transformer, "segment.events", known).events
    assert event.payload["user"]["external_id"] == sha256("user_123")


def test_when_override_narrows_the_presets_rule(write_config: WriteConfig) -> None:
    raw = config_raw("snowplow", when={"field": "br_lang", "equals": "en-GB"})
    transformer = pipeline(write_config, raw)
    assert mapped(transformer, "snowplow.enriched", load("snowplow.v1/site_search.json")).events
    german = load("snowplow.v1/button_click.json")
    assert german["br_lang"] == "de-DE"
    assert mapped(transformer, "snowplow.enriched", german).filtered
    # The preset's own rule still holds: a robot stays filtered.
    robot = load("snowplow.v1/robot_add_to_cart_filtered.json")
    assert robot["br_lang"] == "en-GB"
    assert mapped(transformer, "snowplow.enriched", robot).filtered


def test_event_id_override_replaces_the_presets(write_config: WriteConfig) -> None:
    transformer = pipeline(write_config, config_raw("segment", event_id="properties.order_id"))
    (event,) = mapped(transformer, "segment.events", load("segment.v1/order_completed.json")).events
    assert event.payload["event_id"] == "50314b8e9bcf000000000000"
    # No order id: the derived id, as for any mapping.
    search = load("segment.v1/products_searched.json")
    (event,) = mapped(transformer, "segment.events", search, offset=9).events
    assert event.payload["event_id"] == "segment.events-0-9"


def test_passed_through_keys_reach_every_expanded_mapping(write_config: WriteConfig) -> None:
    raw = config_raw("ga4", test_event_code="TEST123", limited_data_use=True)
    transformer = pipeline(write_config, raw)
    events = mapped(transformer, "ga4.mp", load("ga4.v1/funnel_three_events.json")).events
    assert {e.test_event_code for e in events} == {"TEST123"}
    assert {e.payload["limited_data_use"] for e in events} == {True}


def test_expanded_mappings_share_nothing_with_each_other_or_the_preset() -> None:
    written = {
        "name": "shop",
        "topic": "t",
        "preset": "segment",
        "when": {"field": "x", "exists": True},
    }
    first, second, *_ = expand(written)
    first["fields"]["user.ip"]["first"].append("mutated")
    first["when"]["all"][0]["equals"] = "mutated"
    assert "mutated" not in json.dumps(second)
    assert "mutated" not in json.dumps(expand(written))
    assert "mutated" not in json.dumps(load_preset("segment").fields)


def test_a_for_each_written_beside_a_preset_is_kept() -> None:
    written = {"name": "shop", "topic": "t", "preset": "segment"}
    assert {m.get("for_each") for m in expand(written)} == {None}
    assert {m.get("for_each") for m in expand({**written, "for_each": "batch"})} == {"batch"}
    ga4 = {**written, "preset": "ga4"}
    assert {m.get("for_each") for m in expand(ga4)} == {"events"}
    assert {m.get("for_each") for m in expand({**ga4, "for_each": "hits"})} == {"hits"}


# --- mistakes ------------------------------------------------------------------------------


def problems_of(write_config: WriteConfig, raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write_config(raw), clock=lambda: EXAMPLES_NOW, environ={})
    return list(caught.value.problems)


def test_an_unknown_preset_is_named_with_the_ones_there_are(write_config: WriteConfig) -> None:
    raw = config_raw("segment")
    raw["mappings"][0]["preset"] = "nosuch"
    problems = problems_of(write_config, raw)
    assert "mappings[0].preset: must be one of ga4, segment, snowplow" in problems


def test_an_event_beside_a_preset_is_refused(write_config: WriteConfig) -> None:
    (problem,) = problems_of(write_config, config_raw("ga4", event="Purchase"))
    assert problem.startswith("mappings[0].event: a preset maps several events")


def test_events_without_a_preset_are_refused(write_config: WriteConfig) -> None:
    raw = config_raw("ga4")
    raw["mappings"][0] = {
        "name": "plain",
        "topic": "t",
        "event": "Lead",
        "events": {"generate_lead": "Lead"},
        "fields": {"event_time": "ts"},
    }
    assert problems_of(write_config, raw) == [
        "mappings[0].events: only a mapping with a preset takes events"
    ]


def test_removing_every_event_of_the_table_is_refused(write_config: WriteConfig) -> None:
    table = load_preset("snowplow").events
    raw = config_raw("snowplow", events=dict.fromkeys(table))
    (problem,) = problems_of(write_config, raw)
    assert problem == "mappings[0].events: no event is left in the table of preset snowplow"


def test_a_null_field_without_a_preset_is_refused(write_config: WriteConfig) -> None:
    raw = config_raw("ga4")
    raw["mappings"][0] = {
        "name": "plain",
        "topic": "t",
        "event": "Lead",
        "fields": {"event_time": "ts", "user.ip": None},
    }
    assert problems_of(write_config, raw) == [
        "mappings[0].fields.user.ip: null only removes a field that a preset gives"
    ]


def test_a_bad_override_field_is_named_once_at_the_line_written(write_config: WriteConfig) -> None:
    raw = config_raw("segment", fields={"user.emial": "traits.email"})
    problems = problems_of(write_config, raw)
    assert problems == [
        "mappings[0].fields.user.emial: unknown TikTok field; did you mean user.email?"
    ]


# --- check-config -------------------------------------------------------------------------


def test_check_config_prints_the_expansion_as_mappings_that_work_alone(
    preset_config: Callable[..., Path],
    write_config: WriteConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for preset in PRESETS:
        capsys.readouterr()
        assert main(["check-config", str(preset_config(preset))]) == 0
        out = capsys.readouterr().out
        head = f"mappings[0]: preset {preset} expands to\n"
        assert head in out
        printed = out.split(head, 1)[1]
        assert "&id" not in printed, "no YAML anchors in the expansion"
        expansion = yaml.safe_load(printed)
        events = {m["event"] for m in expansion}
        assert events == set(load_preset(preset).events.values())
        assert all(m["name"].startswith("site.") for m in expansion)
        # Written out as they are printed, the mappings make what the preset makes.
        raw = config_raw(preset)
        raw["mappings"] = expansion
        alone = pipeline(write_config, raw)
        with_preset = pipeline(write_config, config_raw(preset))
        topic = SHAPE_TOPICS[preset]
        for path in sorted((EXAMPLES / f"{preset}.v1").glob("*.json")):
            record = path.read_bytes()
            one = alone.transform(topic, 0, 3, record)
            other = with_preset.transform(topic, 0, 3, record)
            assert [e.data for e in one.events] == [e.data for e in other.events], path.name


@pytest.mark.parametrize("preset", PRESETS)
def test_the_example_configuration_of_each_preset_checks(
    preset: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = CONFIG_EXAMPLES / f"{preset}.yaml"
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"preset {preset} expands to" in out
    raw = yaml.safe_load(config.read_text())
    assert raw["mappings"][0]["topic"] == SHAPE_TOPICS[preset]


# --- produce-sample --shape ------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_sample_records_of_each_shape_map_through_its_preset_without_a_rejection(
    preset: str, write_config: WriteConfig
) -> None:
    start = EXAMPLES_NOW - 600
    records, expected = generate(1500, seed=11, start=start, shape=preset)
    assert {r.topic for r in records} == {SHAPE_TOPICS[preset]}
    transformer = pipeline(write_config, config_raw(preset))
    produced: Counter[str] = Counter()
    for offset, record in enumerate(records):
        result = transformer.transform(record.topic, 0, offset, record.value)
        assert not result.rejected, (record.value, [r.reason for r in result.rejected])
        assert sorted(e.event for e in result.events) == sorted(record.expected_events)
        produced.update(e.event for e in result.events)
    assert produced == expected
    assert set(expected) == set(load_preset(preset).events.values())
    assert any(not r.expected_events for r in records), "some records are filtered on purpose"


@pytest.mark.parametrize("preset", PRESETS)
def test_sample_records_of_each_shape_map_through_its_example_configuration(
    preset: str, write_config: WriteConfig
) -> None:
    raw = yaml.safe_load((CONFIG_EXAMPLES / f"{preset}.yaml").read_text())
    transformer = pipeline(write_config, raw)
    records, expected = generate(600, seed=2, start=EXAMPLES_NOW - 600, shape=preset)
    produced: Counter[str] = Counter()
    for offset, record in enumerate(records):
        result = transformer.transform(record.topic, 0, offset, record.value)
        assert not result.rejected
        produced.update(e.event for e in result.events)
    assert produced == expected


def test_sample_of_a_shape_is_deterministic_and_varied() -> None:
    for preset in PRESETS:
        first, _ = generate(300, seed=3, start=EXAMPLES_NOW, shape=preset)
        second, _ = generate(300, seed=3, start=EXAMPLES_NOW, shape=preset)
        other, _ = generate(300, seed=4, start=EXAMPLES_NOW, shape=preset)
        assert first == second
        assert first != other
        assert len({r.key for r in first}) > 100, "many visitors, some returning"
    ga4, _ = generate(500, seed=3, start=EXAMPLES_NOW, shape="ga4")
    assert max(len(r.expected_events) for r in ga4) == 3
    bodies = [orjson.loads(r.value) for r in ga4]
    assert any("sha256_email_address" in b.get("user_data", {}) for b in bodies)
    assert any("email" in b.get("user_data", {}) for b in bodies)
    segment, _ = generate(500, seed=3, start=EXAMPLES_NOW, shape="segment")
    libraries = Counter(orjson.loads(r.value)["context"]["library"]["name"] for r in segment)
    assert set(libraries) == {"analytics.js", "RudderLabs JavaScript SDK"}


class FakeProducer:
    """Stands in for processor.kafka.producer: records what produce-sample would send."""

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.records: list[Any] = []

    def ensure_topics(self, bootstrap: str, topics: list[str], partitions: int) -> None:
        self.topics += topics

    def produce_sample(self, bootstrap: str, records: list[Any], *, rate: float = 0.0) -> int:
        self.records += records
        return len(records)


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> FakeProducer:
    from processor.kafka import producer  # noqa: PLC0415 - only this test needs the client

    fake = FakeProducer()
    monkeypatch.setattr(producer, "ensure_topics", fake.ensure_topics)
    monkeypatch.setattr(producer, "produce_sample", fake.produce_sample)
    return fake


def test_produce_sample_shape_writes_the_shape_and_counts_its_events(
    fake_producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["produce-sample", "--bootstrap", "127.0.0.1:1", "--shape", "ga4", "--count", "400",
         "--seed", "5", "--start", str(EXAMPLES_NOW), "--json"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == "ga4"
    assert summary["topics"] == fake_producer.topics == ["ga4.mp"]
    records = fake_producer.records
    assert summary["produced"] == len(records) == 400
    assert summary["expected_events"] == dict(
        sorted(Counter(e for r in records for e in r.expected_events).items())
    )
    assert summary["filtered"] == sum(1 for r in records if not r.expected_events)
    assert sum(summary["expected_events"].values()) > 400 - summary["filtered"], (
        "some bodies hold several"
    )


def test_produce_sample_shape_takes_one_topic(
    fake_producer: FakeProducer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["produce-sample", "--bootstrap", "127.0.0.1:1", "--count", "20", "--json"]
    assert main([*args, "--shape", "segment", "--topics", "shop.tracks"]) == 0
    assert json.loads(capsys.readouterr().out)["topics"] == ["shop.tracks"]
    assert main([*args, "--shape", "snowplow", "--topics", "snowplow=good.enriched"]) == 0
    assert json.loads(capsys.readouterr().out)["topics"] == ["good.enriched"]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--shape", "snowplow", "--topics", "a,b"])
    assert exited.value.code == 2
    assert "--shape snowplow writes one topic" in capsys.readouterr().err
    # The default shape is still the seed clickstream on its four topics.
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == "clickstream"
    assert summary["topics"] == ["web.clicks", "web.forms", "web.pageviews", "web.signups"]
