"""The `when` filter language."""

from __future__ import annotations

from typing import Any

import pytest

from processor.mapping.rules import compile_rule

RECORD = {
    "page": {"type": "product", "url": "https://shop.example.com/p/1?ttclid=abc"},
    "product": {"price": 49.99, "stock": "12", "tags": ["sale"]},
    "flags": {"beta": True, "count": 1},
    "user_id": None,
}


def matches(rule: dict[str, Any], record: dict[str, Any] = RECORD) -> bool:
    problems: list[str] = []
    predicate = compile_rule(rule, "when", problems)
    assert predicate is not None, problems
    return predicate(record)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"field": "page.type", "equals": "product"}, True),
        ({"field": "page.type", "equals": "blog"}, False),
        ({"field": "page.type", "in": ["comparison", "product"]}, True),
        ({"field": "page.type", "in": ["blog"]}, False),
        ({"field": "page.type", "exists": True}, True),
        ({"field": "page.missing", "exists": True}, False),
        ({"field": "user_id", "exists": False}, True),
        ({"field": "page.url", "prefix": "https://shop."}, True),
        ({"field": "page.url", "prefix": ["http://", "ftp://"]}, False),
        ({"field": "page.url", "regex": r"[?&]ttclid="}, True),
        ({"field": "page.url", "regex": r"^/p/"}, False),
        ({"field": "product.price", "gt": 40}, True),
        ({"field": "product.price", "lte": 40}, False),
        ({"field": "product.stock", "gte": 12}, True),
        ({"field": "page.type", "gt": 1}, False),
        ({"field": "product.price", "gt": 10, "lt": 50}, True),
        ({"field": "product.price", "gt": 10, "lt": 20}, False),
        ({"field": "flags.count", "equals": True}, False),
        ({"field": "flags.beta", "equals": True}, True),
        ({"field": "flags.beta", "in": [1]}, False),
        ({"field": "flags.count", "in": [True]}, False),
        ({"field": "product.tags", "in": [["sale"]]}, True),
        ({"field": "product", "in": ["x"]}, False),
        ({"all": [{"field": "page.type", "equals": "product"}, {"field": "product.price", "gt": 1}]}, True),
        ({"all": [{"field": "page.type", "equals": "product"}, {"field": "product.price", "gt": 100}]}, False),
        ({"any": [{"field": "page.type", "equals": "blog"}, {"field": "product.price", "gt": 1}]}, True),
        ({"not": {"field": "page.type", "equals": "product"}}, False),
        ({"not": {"any": [{"field": "page.type", "equals": "blog"}]}}, True),
    ],
)  # fmt: skip
def test_rule(rule: dict[str, Any], expected: bool) -> None:
    assert matches(rule) is expected


def test_rules_never_raise_on_odd_records() -> None:
    rule = {"all": [{"field": "page.type", "prefix": "p"}, {"field": "a.b[3].c", "gt": 1}]}
    for record in ({}, {"page": []}, {"page": {"type": 5}}, {"a": {"b": "str"}}):
        assert matches(rule, record) is False


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"field": "x"}, "when: a field rule needs one of"),
        ({"field": "x", "regex": "("}, "when.regex: invalid regular expression"),
        ({"field": "x", "equal": 1}, "did you mean equals?"),
        ({"field": "x", "in": "abc"}, "when.in: must be a list"),
        ({"field": "x", "exists": "yes"}, "when.exists: must be true/false"),
        ({"field": "x", "gt": True}, "when.gt: must be a number"),
        ({"field": "x", "prefix": [1]}, "when.prefix: must be text"),
        ({"all": [{"field": "x"}]}, "when.all[0]: a field rule needs"),
        ({"all": [], "any": []}, "exactly one of"),
        ({"not": {"field": "x", "equals": 1}, "field": "y"}, "exactly one of"),
        ({"field": "a..b", "equals": 1}, "when.field: not a field path"),
        ("page.type", "when: a rule is an object"),
    ],
)
def test_invalid_rules_are_reported_with_their_path(rule: Any, problem: str) -> None:
    problems: list[str] = []
    assert compile_rule(rule, "when", problems) is None
    assert any(problem in p for p in problems), problems
