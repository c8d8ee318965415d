"""The `when` filter language."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processor.errors import ConfigError
from processor.mapping.rules import compile_rule
from processor.transform import load_pipeline

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


# --- regex: RE2, linear time ---------------------------------------------------------


@pytest.mark.timeout(5)
def test_regex_with_nested_quantifiers_runs_in_linear_time() -> None:
    # With a backtracking engine this takes 2**100000 steps: the guard is the timeout.
    rule = {"field": "s", "regex": r"^(a+)+$"}
    assert matches(rule, {"s": "a" * 100_000 + "!"}) is False
    assert matches(rule, {"s": "a" * 100_000}) is True


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"step-\d+", "checkout/step-3/confirm", True),  # search: anywhere in the value
        (r"^step-\d+", "checkout/step-3", False),
        (r"^checkout/step-\d+$", "checkout/step-3", True),
        (r"^(checkout|cart)$", "cart", True),
        (r"^(checkout|cart)$", "carts", False),
        (r"(?i)^product$", "PRODUCT", True),
        (r"^product$", "PRODUCT", False),
        (r"^(?P<kind>p\w+)/", "product/1", True),
        (r"^.{4}$", "café", True),  # '.' is one character, not one UTF-8 byte
        (r"^caf[é]$", "café", True),
        (r"\pL+ \p{Greek}", "alpha αβγ", True),
        (r"^[[:digit:]]+\z", "2002", True),
        (r"^$", "", True),
        (r"x", "", False),
    ],
)
def test_regex_searches_the_value(pattern: str, text: str, expected: bool) -> None:
    assert matches({"field": "s", "regex": pattern}, {"s": text}) is expected


def test_regex_never_matches_what_is_not_text() -> None:
    rule = {"field": "s", "regex": r"^\d+$"}
    for value in (12, 1.5, True, None, ["12"], {"12": "12"}):
        assert matches(rule, {"s": value}) is False


def test_regex_tolerates_a_lone_surrogate() -> None:
    # json.loads (unlike orjson) lets "\ud800" through; the predicate must still not raise.
    assert matches({"field": "s", "regex": "abc$"}, {"s": "\ud800abc"}) is True


@pytest.mark.parametrize(
    ("pattern", "detail"),
    [
        (r"(a)\1", r"invalid escape sequence: \1"),
        (r"(?P<n>a)(?P=n)", "(?P"),
        (r"price(?=\d)", "(?="),
        (r"(?<!un)paid", "(?<!"),
        (r"(?>a+)b", "(?>"),
        (r"a++", "++"),
        (r"a{1001}", "{1001}"),
        (r"(?x) a b", "(?x"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_with_the_field_path(pattern: str, detail: str) -> None:
    problems: list[str] = []
    rule = {"all": [{"field": "x", "exists": True}, {"not": {"field": "x", "regex": pattern}}]}
    assert compile_rule(rule, "mappings[3].when", problems) is None
    assert len(problems) == 1, problems
    assert problems[0].startswith("mappings[3].when.all[1].not.regex: not supported by RE2"), (
        problems
    )
    assert detail in problems[0]


def test_python_end_anchor_gets_a_hint() -> None:
    problems: list[str] = []
    assert compile_rule({"field": "x", "regex": r"done\Z"}, "when", problems) is None
    assert problems[0].startswith("when.regex: not supported by RE2"), problems
    assert problems[0].endswith(r"RE2 writes the end of the text as \z")


def test_a_pattern_wrong_in_any_engine_is_called_invalid() -> None:
    problems: list[str] = []
    assert compile_rule({"field": "x", "regex": "[unclosed"}, "when", problems) is None
    assert problems == [
        "when.regex: invalid regular expression: unterminated character set at position 0"
    ]


def test_a_backreference_is_refused_when_the_configuration_is_loaded(
    example_raw: dict[str, Any], write_config: Callable[[dict[str, Any]], Path]
) -> None:
    example_raw["mappings"][2]["when"] = {"field": "button.id", "regex": r"^(\w+)-\1$"}
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write_config(example_raw), clock=lambda: 0.0, environ={})
    assert [p for p in caught.value.problems if "regex" in p] == [
        "mappings[2].when.regex: not supported by RE2, the linear-time regex engine (no "
        "backreferences, lookahead, lookbehind, atomic groups, possessive quantifiers or "
        r"repeat counts over 1000): invalid escape sequence: \1"
    ]
