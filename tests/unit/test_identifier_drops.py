"""No conversion lost to one bad field: a customer-information value that cannot be
normalised is left out of the event, counted and shown; the event goes out with what
is valid. ``on_invalid_identifier: reject`` keeps the old all-or-nothing rule."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import orjson
import pytest

from processor.config import Config, load_config
from processor.kafka.api import TopicPartition
from processor.mapping.coerce import DROP_REASONS, drop_reason
from processor.transform import Transformer, build_transformer
from processor.types import Stage
from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLE_CONFIG
from tests.unit.test_cli import cli
from tests.unit.test_loop import NOW, harness

LEAD = json.loads((CLICKSTREAM_EXAMPLES / "form_submit.v1" / "contact_sales.json").read_text())
EMAIL_HASH = hashlib.sha256(b"lead.form@example.org").hexdigest()
IMPOSSIBLE_PHONE = "+1 555"


def transformer(**mapping: Any) -> Transformer:
    config: Config = load_config(EXAMPLE_CONFIG, environ={})
    if mapping:
        config = replace(config, mappings=tuple(replace(m, **mapping) for m in config.mappings))
    built, _ = build_transformer(config, lambda: 1_767_225_900.0)
    return built


def lead(**user: Any) -> bytes:
    return orjson.dumps({**LEAD, "user": {**LEAD["user"], **user}})


def test_an_impossible_phone_is_dropped_and_the_lead_goes_out_with_its_email() -> None:
    result = transformer().transform("web.forms", 0, 7, lead(phone=IMPOSSIBLE_PHONE))
    assert result.rejected == ()
    (event,) = result.events
    assert event.payload["user"]["email"] == EMAIL_HASH
    assert "phone" not in event.payload["user"]
    assert event.payload["user"]["ip"] == "198.51.100.20"
    ((field, reason),) = event.dropped
    assert field == "user.phone"
    assert "phone number" in reason
    assert IMPOSSIBLE_PHONE not in reason  # a reason never carries the value


def test_a_list_keeps_its_valid_members() -> None:
    result = transformer().transform("web.forms", 0, 7, lead(email=["lead.form@example.org", ""]))
    (event,) = result.events
    assert event.payload["user"]["email"] == [EMAIL_HASH]
    ((field, reason),) = event.dropped
    assert field == "user.email"
    assert reason.startswith("1 of 2 values left out: empty")
    assert drop_reason(reason) == "partial_list"


def test_a_list_with_no_valid_member_is_dropped_whole() -> None:
    result = transformer().transform("web.forms", 0, 7, lead(email=["nope", " "]))
    (event,) = result.events
    assert "email" not in event.payload["user"]
    assert [f for f, _ in event.dropped] == ["user.email"]


def test_every_bad_identifier_is_dropped_and_the_rest_is_sent() -> None:
    record = orjson.loads(lead(email="not-an-address", phone="12"))
    record["context"]["ip"] = "999.1.1.1"
    result = transformer().transform("web.forms", 0, 7, orjson.dumps(record))
    (event,) = result.events
    assert sorted(f for f, _ in event.dropped) == ["user.email", "user.ip", "user.phone"]
    assert set(event.payload["user"]) == {"user_agent", "locale"}
    assert event.payload["event"] == "Lead"


def test_reject_keeps_the_old_rule_for_those_who_want_it() -> None:
    strict = transformer(on_invalid_identifier="reject")
    result = strict.transform("web.forms", 0, 7, lead(phone=IMPOSSIBLE_PHONE))
    assert result.events == ()
    (rejection,) = result.rejected
    assert rejection.stage == Stage.MAPPING
    assert rejection.reason.startswith("user.phone (from user.phone): ")


def test_an_object_where_line_items_belong_is_never_silent() -> None:
    config: Config = load_config(EXAMPLE_CONFIG, environ={})
    fields = {
        "event_time": "timestamp",
        "properties.contents": {"each": "form.items", "fields": {"content_id": "sku"}},
    }
    forms = [replace(m, fields=fields) for m in config.mappings if m.topic == "web.forms"]
    record = {**LEAD, "form": {**LEAD["form"], "items": {"sku": "a-1"}}}
    for mode, dropped in (("drop", True), ("reject", False)):
        mappings = tuple(replace(m, on_invalid_identifier=mode) for m in forms)
        built, _ = build_transformer(replace(config, mappings=mappings), lambda: 1_767_225_900.0)
        result = built.transform("web.forms", 0, 7, orjson.dumps(record))
        if dropped:
            (event,) = result.events
            assert "contents" not in event.payload.get("properties", {})
            assert event.dropped == (
                ("properties.contents", "form.items: expected a list of line items, got an object"),
            )
        else:
            (rejection,) = result.rejected
            assert "expected a list of line items, got an object" in rejection.reason


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("empty email address", "empty"),
        ("phone number too long", "too_long"),
        ("expected text or a list of text, got an object", "wrong_type"),
        ("2 of 3 values left out: not a valid email address", "partial_list"),
        ("not a possible phone number for its country", "invalid"),
    ],
)
def test_drop_reasons_are_a_small_fixed_set(message: str, reason: str) -> None:
    assert drop_reason(message) == reason
    assert reason in DROP_REASONS


def test_the_loop_counts_each_drop_by_event_field_and_reason() -> None:
    h = harness()
    record = orjson.loads(lead(phone=IMPOSSIBLE_PHONE))
    record["timestamp"] = "2026-01-01T00:00:00Z"
    h.source.append("web.forms", 0, orjson.dumps(record), timestamp=NOW)
    h.source.assign([TopicPartition("web.forms", 0)])
    h.turn(2)
    labels = {"event": "Lead", "field": "user.phone", "reason": "invalid"}
    assert h.metrics.value("identifiers_dropped_total", labels) == 1
    assert len(h.sender.submitted) == 1


def test_preview_json_shows_the_body_without_the_phone_and_the_reason() -> None:
    done = cli(
        "preview", "--json", "--config", str(EXAMPLE_CONFIG), "--topic", "web.forms",
        "--now", "2026-01-01T00:10:00Z", "-", stdin=lead(phone=IMPOSSIBLE_PHONE),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert line["outcome"] == "mapped"
    (event,) = line["body"]["data"]
    assert event["user"]["email"] == EMAIL_HASH
    assert "phone" not in event["user"]
    ((dropped),) = line["dropped"]
    assert dropped["field"] == "user.phone"
    assert "not a possible phone number" in dropped["reason"]
    text = cli(
        "preview", "--config", str(EXAMPLE_CONFIG), "--topic", "web.forms",
        "--now", "2026-01-01T00:10:00Z", "-", stdin=lead(phone=IMPOSSIBLE_PHONE),
    )  # fmt: skip
    assert "  dropped: user.phone (not a possible phone number" in text.stdout
