"""A record's way to TikTok events: mapping, coercion, and every way to be rejected."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.transform import RecordResult, Transformer, load_pipeline
from processor.types import Stage
from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLE_CONFIG, EXAMPLES_NOW

NOW = float(EXAMPLES_NOW)


@pytest.fixture
def example() -> Transformer:
    _, transformer, _ = load_pipeline(EXAMPLE_CONFIG, clock=lambda: NOW, environ={})
    return transformer


def record(kind: str, name: str) -> dict[str, Any]:
    return json.loads((CLICKSTREAM_EXAMPLES / f"{kind}.v1" / f"{name}.json").read_text())


def run(t: Transformer, topic: str, doc: Any, offset: int = 5) -> RecordResult:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return t.transform(topic, 2, offset, raw)


def only_event(result: RecordResult) -> dict[str, Any]:
    assert not result.rejected, result.rejected
    assert len(result.events) == 1
    return result.events[0].payload


def only_rejection(result: RecordResult) -> tuple[str, str]:
    assert not result.events
    assert len(result.rejected) == 1
    return str(result.rejected[0].stage), result.rejected[0].reason


def test_view_content_from_a_product_page(example: Transformer) -> None:
    event = only_event(run(example, "web.pageviews", record("page_view", "product_from_tiktok_ad")))
    assert event == {
        "event": "ViewContent",
        "event_time": 1_767_225_600,
        "event_id": "7f3e2a91-5c1d-4e8a-9b7a-0c3f2d1e4a55",
        "user": {
            "ip": "203.0.113.7",
            "user_agent": event["user"]["user_agent"],
            "locale": "en-GB",
            "ttp": "Qm4tZr8LwP2vN6cXy0HbJ3sKdAe",
            "ttclid": "E.C.P.v3Xk9QmZ",
        },
        "page": {
            "url": "https://shop.example.com/p/sku-1001?ttclid=E.C.P.v3Xk9QmZ",
            "referrer": "https://www.tiktok.com/",
        },
        "properties": {
            "value": 49.99,
            "currency": "GBP",
            "content_type": "product",
            "contents": [
                {
                    "content_id": "sku-1001",
                    "content_name": "Trail Jacket",
                    "content_category": "outerwear",
                    "price": 49.99,
                }
            ],
        },
    }


def test_sign_up_hashes_match_tiktok_vectors(example: Transformer) -> None:
    event = only_event(run(example, "web.signups", record("sign_up", "email_signup")))
    assert event["event"] == "CompleteRegistration"
    assert (
        event["user"]["email"] == "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
    )
    assert (
        event["user"]["phone"] == "a8acc3a90a7b4e4dc65e93db9240ed26523050ef754d63b75b5161de76781436"
    )
    assert (
        event["user"]["external_id"]
        == "8dec7f953696ab23765e83f9d8252c223414f6b6e8b4e64842c6a4a6625599d6"
    )


def test_click_button_with_numeric_sku_sends_string_id(example: Transformer) -> None:
    event = only_event(
        run(example, "web.clicks", record("button_click", "add_to_wishlist_known_user"))
    )
    assert event["event"] == "ClickButton"
    assert event["properties"]["contents"] == [{"content_id": "2002", "content_name": "Rain Boots"}]
    assert event["user"]["ttclid"] == "E.C.P.abc123"  # from the landing URL
    assert (
        event["user"]["email"] == "848a771458438fc2ec420560d769fb9b9b86851ee338ec56517baabd79d3bb4f"
    )


def test_lead_from_a_form_and_newsletter_is_filtered(example: Transformer) -> None:
    event = only_event(run(example, "web.forms", record("form_submit", "contact_sales")))
    assert event["event"] == "Lead"
    assert event["properties"]["currency"] == "USD"  # upper-cased
    assert (
        event["user"]["phone"] == "abbf04d6f629b136344993dfb197f1fd9296f712eaf103ebc22b1cc29fb0f135"
    )
    assert run(example, "web.forms", record("form_submit", "newsletter_anonymous")).filtered


def test_unimportant_page_is_filtered(example: Transformer) -> None:
    assert run(example, "web.pageviews", record("page_view", "blog_not_an_event")).filtered


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-01-01T00:00:00Z", 1_767_225_600),
        ("2026-01-01T01:00:00+01:00", 1_767_225_600),
        ("2026-01-01T00:00:00.999Z", 1_767_225_600),
        ("2026-01-01T00:00:00", 1_767_225_600),
        (1_767_225_600_123, 1_767_225_600),
        (1_767_225_600, 1_767_225_600),
        (1_767_225_600.5, 1_767_225_600),
        ("1767225600123", 1_767_225_600),
    ],
)
def test_event_time_formats(example: Transformer, timestamp: Any, expected: int) -> None:
    doc = record("page_view", "product_from_tiktok_ad") | {"timestamp": timestamp}
    assert only_event(run(example, "web.pageviews", doc))["event_time"] == expected


def test_derived_event_id_is_stable_per_topic_partition_offset(
    example_raw: dict[str, Any], write_config: Callable[..., Path]
) -> None:
    del example_raw["mappings"][0]["event_id"]
    _, t, _ = load_pipeline(write_config(example_raw), clock=lambda: NOW, environ={})
    doc = record("page_view", "product_from_tiktok_ad")
    first = only_event(run(t, "web.pageviews", doc, offset=41))
    again = only_event(run(t, "web.pageviews", doc, offset=41))
    other = only_event(run(t, "web.pageviews", doc, offset=42))
    assert first["event_id"] == again["event_id"] == "web.pageviews-2-41"
    assert other["event_id"] == "web.pageviews-2-42"


def test_record_without_its_id_field_falls_back_to_derived_id(
    example_raw: dict[str, Any], write_config: Callable[..., Path]
) -> None:
    example_raw["mappings"][2]["event_id"] = "tracker.message_id"
    _, t, _ = load_pipeline(write_config(example_raw), clock=lambda: NOW, environ={})
    doc = record("button_click", "start_trial")
    assert only_event(run(t, "web.clicks", doc, offset=9))["event_id"] == "web.clicks-2-9"
    doc["tracker"] = {"message_id": 123}
    assert only_event(run(t, "web.clicks", doc, offset=9))["event_id"] == "123"


def test_pixel_and_test_code_per_mapping_and_line_items(
    example_raw: dict[str, Any], write_config: Callable[..., Path]
) -> None:
    example_raw["tiktok"]["test_event_code"] = "TEST1"
    checkout = {
        "name": "checkouts",
        "topic": "shop.orders",
        "event": "Purchase",
        "pixel_code": "C0THERPIXEL0000000",
        "event_id": "order.id",
        "fields": {
            "event_time": "ts",
            "properties.order_id": "order.id",
            "properties.value": "order.total",
            "properties.currency": {"const": "eur"},
            "properties.num_items": "order.count",
            "properties.content_ids": "order.skus",
            "properties.contents": {
                "each": "order.items",
                "fields": {"content_id": "sku", "quantity": "qty", "price": "price"},
            },
            "limited_data_use": {"const": True},
        },
    }
    example_raw["mappings"].append(checkout)
    _, t, warnings = load_pipeline(write_config(example_raw), clock=lambda: NOW, environ={})
    order = {
        "ts": NOW,
        "order": {
            "id": 99,
            "total": "120.50",
            "count": 3.0,
            "skus": ["a", 7],
            "items": [{"sku": "a", "qty": 2, "price": 50}, {"sku": 7, "qty": 1, "price": "20.5"}],
        },
    }
    result = run(t, "shop.orders", order)
    assert len(result.events) == 1
    mapped = result.events[0]
    assert (mapped.event_source, mapped.event_source_id, mapped.test_event_code) == (
        "web",
        "C0THERPIXEL0000000",
        "TEST1",
    )
    assert mapped.payload["event_id"] == "99"
    assert mapped.payload["limited_data_use"] is True
    assert mapped.payload["properties"] == {
        "order_id": "99",
        "value": 120.5,
        "currency": "EUR",
        "num_items": 3,
        "content_ids": ["a", "7"],
        "contents": [
            {"content_id": "a", "quantity": 2, "price": 50},
            {"content_id": "7", "quantity": 1, "price": 20.5},
        ],
    }
    assert any("ClickButton is a legacy TikTok event" in w for w in warnings)


def test_one_record_can_feed_two_mappings(
    example_raw: dict[str, Any], write_config: Callable[..., Path]
) -> None:
    second = dict(example_raw["mappings"][0], name="all-views", event="PageVisit")
    del second["when"]
    example_raw["mappings"].append(second)
    _, t, warnings = load_pipeline(write_config(example_raw), clock=lambda: NOW, environ={})
    result = run(t, "web.pageviews", record("page_view", "product_from_tiktok_ad"))
    assert [e.event for e in result.events] == ["ViewContent", "PageVisit"]
    assert any("PageVisit is a custom event" in w for w in warnings)
    blog = record("page_view", "blog_not_an_event") | {"timestamp": NOW}
    assert [e.event for e in run(t, "web.pageviews", blog).events] == ["PageVisit"]


BAD_INPUTS = [
    (b"\xff\xfe not json", Stage.DECODE, "not JSON"),
    (b"[1, 2]", Stage.DECODE, "not a JSON object"),
    (b'{"event_id": "x"', Stage.DECODE, "not JSON"),
]


@pytest.mark.parametrize(("raw", "stage", "reason"), BAD_INPUTS)
def test_undecodable_records(example: Transformer, raw: bytes, stage: Stage, reason: str) -> None:
    got_stage, got_reason = only_rejection(run(example, "web.pageviews", raw))
    assert got_stage == stage
    assert reason in got_reason


def test_tombstone_and_unknown_topic(example: Transformer) -> None:
    assert only_rejection(example.transform("web.pageviews", 0, 0, None))[0] == Stage.DECODE
    assert "no mapping for topic" in only_rejection(run(example, "web.unknown", {}))[1]


def mutate(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for p in parents:
            doc = doc[p]
        if value is KeyError:
            del doc[leaf]
        else:
            doc[leaf] = value

    return apply


@pytest.mark.parametrize(
    ("change", "stage", "reason"),
    [
        (mutate("page.url", 42), Stage.INPUT_SCHEMA, "page.url:"),
        (mutate("page", KeyError), Stage.INPUT_SCHEMA, "page"),
        (mutate("context.user_agent", KeyError), Stage.INPUT_SCHEMA, "context"),
        (mutate("timestamp", "yesterday-ish"), Stage.MAPPING, "event_time (from timestamp): not an ISO-8601"),
        (mutate("timestamp", 12), Stage.MAPPING, "event_time (from timestamp): time outside 2000 to 2100"),
        (mutate("timestamp", "2026-01-01T00:00:00+00:00Z"), Stage.MAPPING, "event_time"),
        (mutate("timestamp", 1_600_000_000), Stage.STALE, "older than max_event_age 28d"),
        (mutate("timestamp", NOW + 7200), Stage.STALE, "in the future"),
        (mutate("product.currency", "XYZ"), Stage.MAPPING, "properties.currency (from product.currency): not an ISO 4217"),
        (mutate("product.price", -1), Stage.INPUT_SCHEMA, "product.price"),
        (mutate("product.sku", True), Stage.INPUT_SCHEMA, "product.sku"),
        (mutate("page.url", "https://x.example/" + "a" * 4100), Stage.INPUT_SCHEMA, "page.url"),
    ],
)  # fmt: skip
def test_bad_records_name_stage_and_field(
    example: Transformer, change: Callable[[dict[str, Any]], None], stage: Stage, reason: str
) -> None:
    doc = record("page_view", "product_from_tiktok_ad")
    change(doc)
    got_stage, got_reason = only_rejection(run(example, "web.pageviews", doc))
    assert (got_stage, reason in got_reason) == (stage, True), got_reason


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (mutate("context.ip", "300.1.1.1"), "user.ip", "not an IPv4 or IPv6"),
        (mutate("user", {"email": "not-an-email"}), "user.email", "not a valid email address"),
        (mutate("user", {"phone": "12345"}), "user.phone", "not a possible phone number"),
    ],
)
def test_a_bad_customer_field_is_dropped_naming_field_and_reason(
    example: Transformer, change: Callable[[dict[str, Any]], None], field: str, reason: str
) -> None:
    doc = record("page_view", "product_from_tiktok_ad")
    change(doc)
    result = run(example, "web.pageviews", doc)
    (event,) = result.events
    ((got_field, got_reason),) = event.dropped
    assert (got_field, reason in got_reason) == (field, True), got_reason
    assert field.split(".")[1] not in event.payload["user"]


def test_drops_and_rejections_never_contain_the_raw_pii(example: Transformer) -> None:
    doc = record("sign_up", "email_signup")
    doc["user"]["email"] = "secret.person@@example.com"
    doc["user"]["phone"] = "+1 555 SECRET"
    (event,) = run(example, "web.signups", doc).events
    assert len(event.dropped) == 2
    assert "secret" not in str(event.dropped).lower()
    assert "secret" not in str(event.payload).lower()
    doc["timestamp"] = "yesterday-ish SECRET"
    (rejection,) = run(example, "web.signups", doc).rejected
    assert "secret" not in str(rejection).lower()


def test_overlong_strings_are_rejected_by_input_or_output_schema(
    example_raw: dict[str, Any], write_config: Callable[..., Path]
) -> None:
    # Input schema: product.name is at most 512 characters.
    _, t, _ = load_pipeline(EXAMPLE_CONFIG, clock=lambda: NOW, environ={})
    doc = record("page_view", "product_from_tiktok_ad")
    doc["product"]["name"] = "n" * 600
    stage, reason = only_rejection(run(t, "web.pageviews", doc))
    assert (stage, reason.split(":")[0]) == (Stage.INPUT_SCHEMA, "product.name")
    # Output schema: TikTok's description is at most 1,024 characters.
    template = {"template": "{page.title} {page.title} {page.title}"}
    example_raw["mappings"][0]["fields"]["properties.description"] = template
    _, t, _ = load_pipeline(write_config(example_raw), clock=lambda: NOW, environ={})
    doc = record("page_view", "product_from_tiktok_ad")
    doc["page"]["title"] = "t" * 300
    assert only_event(run(t, "web.pageviews", doc))["properties"]["description"]
    doc["page"]["title"] = "t" * 400
    stage, reason = only_rejection(run(t, "web.pageviews", doc))
    assert (stage, reason.split(":")[0]) == (Stage.OUTPUT_SCHEMA, "properties.description")


def test_transform_never_raises_on_random_bytes(example: Transformer) -> None:
    rng = random.Random(3)
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        for topic in example.topics:
            example.transform(topic, 0, 0, raw)


def test_a_long_plain_path_is_read_like_a_short_one(
    example_raw: dict[str, Any], write_config: Callable[[dict[str, Any]], Path]
) -> None:
    # Plain dotted paths are inlined into the generated code at any depth (five parts
    # and more once raised TypeError on every record).
    example_raw["mappings"] = [
        {
            "name": "deep",
            "topic": "deep",
            "event": "ViewContent",
            "fields": {
                "event_time": "a.b.c.d.e.at",
                "page.url": "a.b.c.d.e.url",
                "properties.contents[0].content_id": {"first": ["x.y.z.w.v", "a.b.c.d.e.sku"]},
            },
        }
    ]
    _, deep, _ = load_pipeline(write_config(example_raw), clock=lambda: 1_767_225_660)
    doc = {
        "a": {
            "b": {"c": {"d": {"e": {"at": 1_767_225_600, "url": "https://x.test/p", "sku": "s"}}}}
        }
    }
    (event,) = deep.transform("deep", 0, 0, orjson.dumps(doc)).events
    assert event.payload["page"] == {"url": "https://x.test/p"}
    assert event.payload["properties"]["contents"] == [{"content_id": "s"}]
    assert deep.transform("deep", 0, 0, orjson.dumps({"a": {"b": 1}})).rejected
