"""Value specifications and field paths."""

from __future__ import annotations

from typing import Any

import pytest

from processor.mapping.paths import PathError, compile_path, parse_path
from processor.mapping.values import compile_value

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
