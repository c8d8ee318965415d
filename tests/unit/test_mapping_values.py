"""Value specifications and field paths."""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.config import MappingConfig, load_config
from processor.errors import InvalidRecord
from processor.mapping import CompiledMapping, compile_mappings
from processor.mapping.coerce import CoerceError, to_id, to_id_list, to_text
from processor.mapping.paths import PathError, compile_path, parse_path
from processor.mapping.values import compile_value, url_param
from processor.types import Stage
from tests.conftest import EXAMPLE_CONFIG

RECORD = {
    "id": 7,
    "page": {"url": "https://x.example/p?utm=1&ttclid=E.C.P.9&x=2#frag", "title": ""},
    "order": {"items": [{"sku": "a", "qty": 2}, {"sku": "b"}]},
    "deep": {"a": {"b": {"c": {"d": "four"}}}},
    "form": {"id": "contact", "name": "Contact sales"},
}


def value(spec: Any, record: dict[str, Any] = RECORD) -> Any:
    problems: list[str] = []
    getter = compile_value(spec, "f", problems)
    assert getter is not None, problems
    return getter(record)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("id", 7),
        ("page.url", RECORD["page"]["url"]),
        ("order.items[1].sku", "b"),
        ("order.items[5].sku", None),
        ("order.items[0].sku.more", None),
        ("deep.a.b.c.d", "four"),
        ("page.missing", None),
        ({"path": "page.missing", "default": "d"}, "d"),
        ({"path": "page.title", "default": "d"}, "d"),
        ({"const": {"any": "thing"}}, {"any": "thing"}),
        ({"first": ["page.title", "page.missing", "form.name"]}, "Contact sales"),
        ({"first": ["page.missing"]}, None),
        ({"from_url": "page.url", "param": "ttclid"}, "E.C.P.9"),
        ({"from_url": "page.url", "param": "frag"}, None),
        ({"from_url": "form.id", "param": "ttclid"}, None),
        ({"from_url": {"const": "https://a/?ttclid=z"}, "param": "ttclid"}, "z"),
        # Single-page sites pass it in the fragment; the query wins when both have it.
        ({"from_url": {"const": "https://a/p#ttclid=f"}, "param": "ttclid"}, "f"),
        ({"from_url": {"const": "https://a/p?x=1#y=2&ttclid=f"}, "param": "ttclid"}, "f"),
        ({"from_url": {"const": "https://a/p?ttclid=q#ttclid=f"}, "param": "ttclid"}, "q"),
        ({"from_url": {"const": "https://a/p?ttclid=%20z%20"}, "param": "ttclid"}, "z"),
        ({"from_url": {"const": "https://a/p?ttclid=%20"}, "param": "ttclid"}, None),
        ({"template": "{form.id}: {form.name}"}, "contact: Contact sales"),
        ({"template": "{form.id}/{form.missing}"}, None),
        ({"template": "plain"}, "plain"),
        ({"lookup": "form.id", "table": {"contact": "Lead"}}, "Lead"),
        ({"lookup": "form.name", "table": {"contact": "Lead"}, "default": "other"}, "other"),
        ({"lookup": "id", "table": {"7": "seven"}}, "seven"),
    ],
)
def test_value(spec: Any, expected: Any) -> None:
    assert value(spec) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"const": 1, "path": "x"}, "exactly one of"),
        ({"path": "x", "fallback": 1}, "does not take ['fallback']"),
        ({"from_url": "page.url"}, "'from_url' needs ['param']"),
        ({"first": []}, "f.first: a non-empty list"),
        ({"lookup": "x", "table": []}, "f.table: a mapping"),
        ({"template": 5}, "f.template: text"),
        ({"each": "x", "fields": {}}, "'each' builds properties.contents only"),
        (["list"], "a value is a field path"),
        ("a..b", "not a field path"),
        ({"first": ["ok", "bad..path"]}, "f.first[1]"),
    ],
)
def test_invalid_values_are_reported(spec: Any, problem: str) -> None:
    problems: list[str] = []
    assert compile_value(spec, "f", problems) is None
    assert any(problem in p for p in problems), problems


def test_parse_path() -> None:
    assert parse_path("items[0].sku") == ("items", 0, "sku")
    assert parse_path("a[1][2]") == ("a", 1, 2)
    for bad in ("", " a", "a.", ".a", "a[x]", "a]"):
        with pytest.raises(PathError):
            parse_path(bad)


def test_getters_tolerate_any_shape() -> None:
    for path in ("a", "a.b", "a.b.c", "a[0].b"):
        get = compile_path(path)
        for record in ({}, {"a": None}, {"a": [1]}, {"a": "text"}, {"a": {"b": [{}]}}):
            get(record)


# --- exact ids: every digit or a rejection -------------------------------------------

#: 2026-01-01T00:00:00Z
TIME = 1_767_225_600

#: Every place a number can become an id or text in the event.
ID_FIELDS = {
    "event_time": "ts",
    "properties.order_id": "order",
    "properties.content_ids": "skus",
    "properties.description": "note",
    "properties.shop_id": {"template": "shop-{shop}"},
    "properties.contents[0].content_id": "sku",
}


@cache
def id_mapping() -> CompiledMapping:
    """A Purchase mapping compiled by the real compiler from the example configuration."""
    config = load_config(EXAMPLE_CONFIG, environ={})
    mapping = MappingConfig(
        name="ids", topic="orders", event="Purchase", fields=ID_FIELDS, event_id="id"
    )
    (compiled,), _ = compile_mappings(dataclasses.replace(config, mappings=(mapping,)))
    return compiled


def map_json(raw: bytes, mapping: CompiledMapping | None = None) -> dict[str, Any]:
    """Decode ``raw`` as the consumer does (orjson) and map it."""
    return (mapping or id_mapping()).map(orjson.loads(raw), "orders-0-1").payload


def rejection(raw: bytes, mapping: CompiledMapping | None = None) -> str:
    with pytest.raises(InvalidRecord) as caught:
        map_json(raw, mapping)
    assert caught.value.stage == Stage.MAPPING
    return caught.value.reason


def test_an_event_is_encoded_once_when_mapped() -> None:
    event = id_mapping().map(orjson.loads(field("id", '"o-1"')), "orders-0-1")
    assert orjson.loads(event.data) == event.payload


def test_a_value_json_cannot_hold_is_a_mapping_rejection_naming_the_event() -> None:
    # Decoded JSON never holds one (orjson reads a larger integer as a float), but a
    # record is only a dict to the mapping: an integer past 64 bits cannot be sent.
    config = load_config(EXAMPLE_CONFIG, environ={})
    fields = {"event_time": "ts", "properties.value": "amount", "properties.currency": "currency"}
    spec = MappingConfig(name="sums", topic="orders", event="Purchase", fields=fields)
    (mapping,), _ = compile_mappings(dataclasses.replace(config, mappings=(spec,)))
    record = {"ts": TIME, "amount": 2**70, "currency": "EUR"}
    with pytest.raises(InvalidRecord) as caught:
        mapping.map(record, "orders-0-1")
    assert caught.value.stage == Stage.MAPPING
    assert caught.value.mapping == "sums"
    assert caught.value.reason.startswith("(event): cannot be encoded as JSON: ")


def field(name: str, number: str) -> bytes:
    return b'{"ts": %d, "%s": %s}' % (TIME, name.encode(), number.encode())


# orjson returns -2**63 … 2**64-1 as int, anything beyond as float.
@pytest.mark.parametrize(
    "number",
    [2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1, -(2**63), 12345],
)
def test_integers_orjson_keeps_exact_become_ids_with_every_digit(number: int) -> None:
    assert orjson.loads(str(number)).__class__ is int
    assert map_json(field("id", str(number)))["event_id"] == str(number)
    assert map_json(field("order", str(number)))["properties"]["order_id"] == str(number)


@pytest.mark.parametrize("number", [2**64, 2**64 + 1, 2**64 + 2, -(2**63) - 1, 10**30])
def test_integers_orjson_rounds_to_floats_are_rejected_as_event_ids(number: int) -> None:
    assert orjson.loads(str(number)).__class__ is float
    assert rejection(field("id", str(number))) == (
        "event_id: integer too large to be exact; send ids as strings"
    )


def test_two_ids_one_apart_above_64_bits_never_share_an_event_id() -> None:
    # Both decode to 1.8446744073709552e+19: rounding would dedup one conversion away.
    first, second = orjson.loads(b"18446744073709551617"), orjson.loads(b"18446744073709551618")
    assert first == second
    for raw in (
        b'{"ts": %d, "id": 18446744073709551617}',
        b'{"ts": %d, "id": 18446744073709551618}',
    ):
        assert rejection(raw % TIME).startswith("event_id: integer too large to be exact")


@pytest.mark.parametrize(
    ("written", "expected"),
    [(b"9007199254740991.0", "9007199254740991"), (b"1.0e3", "1000"), (b"-7.0", "-7")],
)
def test_integral_floats_below_2_53_are_exact_ids(written: bytes, expected: str) -> None:
    assert map_json(field("id", written.decode()))["event_id"] == expected


@pytest.mark.parametrize(
    "written", [b"9007199254740992.0", b"9007199254740993.0", b"1e20", b"-1e16"]
)
def test_floats_from_2_53_up_are_rejected_even_when_written_as_floats(written: bytes) -> None:
    assert rejection(field("id", written.decode())).startswith("event_id: integer too large")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("order", "properties.order_id (from order)"),
        ("sku", "properties.contents[0].content_id (from sku)"),
    ],
)
def test_rounded_integers_are_rejected_in_every_id_field(name: str, label: str) -> None:
    assert rejection(field(name, "18446744073709551617")) == (
        f"{label}: integer too large to be exact; send ids as strings"
    )


def test_rounded_integers_are_rejected_in_id_lists() -> None:
    assert rejection(field("skus", "[1, 18446744073709551617]")) == (
        "properties.content_ids (from skus): integer too large to be exact; send ids as strings"
    )
    assert map_json(field("skus", "[1, 18446744073709551615]"))["properties"]["content_ids"] == [
        "1",
        "18446744073709551615",
    ]


def test_ids_sent_as_strings_keep_every_digit() -> None:
    raw = b'{"ts": %d, "id": "18446744073709551617", "order": "18446744073709551618"}' % TIME
    event = map_json(raw)
    assert event["event_id"] == "18446744073709551617"
    assert event["properties"]["order_id"] == "18446744073709551618"


def test_text_fields_refuse_rounded_numbers_and_keep_the_rest() -> None:
    assert rejection(field("note", "18446744073709551617")) == (
        "properties.description (from note): number too large to be exact; send it as a string"
    )
    assert map_json(field("note", "18446744073709551615"))["properties"]["description"] == (
        "18446744073709551615"
    )
    assert map_json(field("note", "49.99"))["properties"]["description"] == "49.99"


def test_templates_refuse_rounded_numbers_naming_the_placeholder() -> None:
    assert rejection(field("shop", "18446744073709551617")) == (
        "properties.shop_id (from template): {shop} in the template: "
        "number too large to be exact; send it as a string"
    )
    assert map_json(field("shop", "18446744073709551615"))["properties"]["shop_id"] == (
        "shop-18446744073709551615"
    )


def test_templates_refuse_rounded_numbers_in_event_time_and_line_items() -> None:
    config = load_config(EXAMPLE_CONFIG, environ={})
    fields = {
        "event_time": {"template": "{ts}"},
        "properties.contents": {
            "each": "items",
            "fields": {"content_id": {"template": "sku-{sku}"}, "quantity": "qty"},
        },
    }
    mapping = MappingConfig(name="t", topic="orders", event="Purchase", fields=fields)
    (compiled,), _ = compile_mappings(dataclasses.replace(config, mappings=(mapping,)))
    assert rejection(b'{"ts": 1e20}', compiled) == (
        "event_time (from template): {ts} in the template: "
        "number too large to be exact; send it as a string"
    )
    raw = b'{"ts": %d, "items": [{"sku": 1, "qty": 2}, {"sku": 18446744073709551617}]}' % TIME
    assert rejection(raw, compiled) == (
        "properties.contents[].content_id (from template): {sku} in the template: "
        "number too large to be exact; send it as a string"
    )
    good = b'{"ts": %d, "items": [{"sku": 18446744073709551615, "qty": 2}]}' % TIME
    assert map_json(good, compiled)["properties"]["contents"] == [
        {"content_id": "sku-18446744073709551615", "quantity": 2}
    ]


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_a_json_integer_id_is_exact_or_rejected_never_rounded(number: int) -> None:
    raw = field("id", str(number))
    if orjson.loads(str(number)).__class__ is int:
        assert map_json(raw)["event_id"] == str(number)
    else:
        assert rejection(raw).startswith("event_id: integer too large to be exact")


def test_coercers_draw_the_line_at_2_53() -> None:
    limit = float(2**53)
    assert to_id(limit - 1) == "9007199254740991"
    assert to_id_list([limit - 1, 3]) == ["9007199254740991", "3"]
    assert to_text(limit - 1) == "9007199254740991.0"  # unchanged: str() of the float
    for coerce in (to_id, to_text, to_id_list):
        for value in (limit, -limit, 1e300):
            with pytest.raises(CoerceError, match="too large to be exact"):
                coerce(value)


# -- URL parameters (ttclid from a landing URL) ------------------------------------------


@pytest.mark.parametrize(
    ("url", "ttclid"),
    [
        ("https://shop.example.com/p/sku-1001?ttclid=E.C.P.v3Xk9QmZ", "E.C.P.v3Xk9QmZ"),
        ("https://x/p?a=1&ttclid=ABC&b=2", "ABC"),
        ("https://x/p#ttclid=ABC", "ABC"),
        ("https://x/p?a=1#b=2&ttclid=ABC", "ABC"),
        ("https://x/#/checkout?ttclid=ABC", "ABC"),
        ("https://x/p?ttclid=%20A%2FB+", "A/B"),
        ("https://x/p?ttclid=Q&ttclid=R", "Q"),
        ("https://x/p?ttclid=Q#ttclid=R", "Q"),
        ("https://x/p?ttclid=#ttclid=R", "R"),
        ("https://x/p?ttclid=+#ttclid=R", "R"),
        ("/relative/path?ttclid=ABC", "ABC"),
    ],
)
def test_ttclid_is_found_in_the_query_or_the_fragment(url: str, ttclid: str) -> None:
    assert url_param(url, "ttclid") == ttclid


@pytest.mark.parametrize(
    "url",
    [
        "https://x/p",
        "https://x/p?a=1#b=2",
        "https://x/p?ttclid=",
        "https://x/p?ttclid=%20",
        "https://x/p?xttclid=1&ttclid_old=2&TTCLID=3",
        "",
        "not a url",
        "https://[::1/p?ttclid=A",
        "https://ex\uff03ample.com/p?ttclid=A",
    ],
)
def test_no_ttclid_or_a_malformed_url_gives_none(url: str) -> None:
    assert url_param(url, "ttclid") is None


@given(st.text(max_size=60), st.text(max_size=20))
def test_url_param_never_raises(url: str, value: str) -> None:
    for candidate in [url, f"https://x/p?ttclid={value}", f"{url}#ttclid={value}"]:
        found = url_param(candidate, "ttclid")
        assert found is None or (found and found == found.strip())
