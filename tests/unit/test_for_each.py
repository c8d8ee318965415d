"""`for_each`: one TikTok event per element of a list in the record (a GA4 body's
events[]), each with its own stable event id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.errors import ConfigError
from processor.transform import RecordResult, Transformer, load_pipeline

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def transformer(
    example_raw: dict[str, Any], write_config: Callable[[dict[str, Any]], Path]
) -> Transformer:
    example_raw["mappings"] = [
        {
            "name": "views",
            "topic": "batches",
            "for_each": "actions",
            "when": {"field": "$each.kind", "equals": "view"},
            "event": "ViewContent",
            "event_id": "$each.id",
            "fields": {
                "event_time": {"first": ["$each.at", "sent_at"]},
                "properties.contents[0].content_id": "$each.sku",
                "user.external_id": "user_id",
                "user.ip": "ip",
            },
        },
        {
            "name": "leads",
            "topic": "batches",
            "for_each": "actions",
            "when": {"field": "$each.kind", "equals": "lead"},
            "event": "Lead",
            "fields": {"event_time": "sent_at", "properties.value": "$each.value"},
        },
    ]
    _, built, _ = load_pipeline(write_config(example_raw), clock=lambda: NOW + 60)
    return built


def run(t: Transformer, doc: Any, offset: int = 7) -> RecordResult:
    return t.transform("batches", 2, offset, orjson.dumps(doc))


BODY = {
    "user_id": "u-1",
    "ip": "203.0.113.7",
    "sent_at": NOW,
    "actions": [
        {"kind": "view", "sku": "a", "id": "view-a"},
        {"kind": "lead", "value": 12.5},
        {"kind": "scroll"},
        {"kind": "view", "sku": "b", "at": NOW - 5},
    ],
}


def test_each_element_becomes_its_own_event_with_its_own_id(transformer: Transformer) -> None:
    result = run(transformer, BODY)
    assert not result.rejected
    events = [e.payload for e in result.events]
    # In the order of the mappings, then of the elements.
    assert [(e["event"], e["event_id"]) for e in events] == [
        ("ViewContent", "view-a"),
        ("ViewContent", "batches-2-7-3"),  # no id of its own: the record's, with its position
        ("Lead", "batches-2-7-1"),
    ]
    assert [e["properties"]["contents"][0]["content_id"] for e in events[:2]] == ["a", "b"]
    assert events[1]["event_time"] == NOW - 5
    assert events[2]["properties"]["value"] == 12.5
    # The record's own fields are there beside the element's.
    assert events[0]["user"]["ip"] == "203.0.113.7"
    assert run(transformer, BODY).events == result.events  # redelivered: the same ids


def test_a_record_without_the_list_or_with_no_matching_element_is_filtered(
    transformer: Transformer,
) -> None:
    for actions in (None, "view", {"kind": "view"}, [], [{"kind": "scroll"}, 3, None]):
        assert run(transformer, {**BODY, "actions": actions}).filtered, actions


def test_a_bad_element_is_rejected_alone_and_the_others_still_map(
    transformer: Transformer,
) -> None:
    body = {**BODY, "actions": [{"kind": "view", "sku": "a"}, {"kind": "lead", "value": "lots"}]}
    result = run(transformer, body)
    assert [e.event for e in result.events] == ["ViewContent"]
    (rejection,) = result.rejected
    assert rejection.mapping == "leads"
    assert rejection.reason.startswith("properties.value")


def test_for_each_must_be_a_field_path(
    example_raw: dict[str, Any], write_config: Callable[[dict[str, Any]], Path]
) -> None:
    example_raw["mappings"][0]["for_each"] = "items[x]"
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write_config(example_raw), clock=lambda: NOW)
    assert any(p.startswith("mappings[0].for_each:") for p in caught.value.problems)
