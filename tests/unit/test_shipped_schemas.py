"""The shipped clickstream schemas accept what ``config/example.yaml`` maps.

Every example document and sample record goes through the example transformer and
becomes its expected event (or is filtered); so does a variant whose email, phone and
user id are SHA-256 digests already (upper-case, padded with spaces), which must come
out as the lower-case digest. Ids sent as integers and prices sent as decimal text pass
the input schema and the mapping too, and the schemas' decimal-text pattern agrees with
the mapping's number coercion.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import example as hypothesis_example
from hypothesis import given
from hypothesis import strategies as st

from processor.config import load_config
from processor.errors import SchemaViolation
from processor.mapping.coerce import CoerceError, to_number
from processor.sample import DEFAULT_TOPICS, ClickstreamGenerator
from processor.schemas import compile_validator
from processor.transform import RecordResult, Transformer, build_transformer
from processor.types import Stage
from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLE_CONFIG, EXAMPLE_TOPICS, EXAMPLES_NOW

NOW = float(EXAMPLES_NOW)
CLICKSTREAM = CLICKSTREAM_EXAMPLES.parent

#: What config/example.yaml makes of each shipped example (None: filtered out). An
#: example file is named ``<schema>/<file>``, one in a schema's ``examples`` array
#: ``<schema>#examples[<n>]``; a new example must be added here.
EXPECTED_EVENTS: dict[str, str | None] = {
    "page_view.v1/blog_not_an_event.json": None,
    "page_view.v1/comparison_epoch_ms.json": "ViewContent",
    "page_view.v1/product_from_tiktok_ad.json": "ViewContent",
    "page_view.v1/release_notes.json": "ViewContent",
    "button_click.v1/add_to_wishlist_known_user.json": "ClickButton",
    "button_click.v1/start_trial.json": "ClickButton",
    "sign_up.v1/email_signup.json": "CompleteRegistration",
    "sign_up.v1/national_phone_number.json": "CompleteRegistration",
    "form_submit.v1/contact_sales.json": "Lead",
    "form_submit.v1/newsletter_anonymous.json": None,
}


@dataclass(frozen=True)
class Example:
    name: str
    topic: str
    document: dict[str, Any]
    expected_event: str | None


def shipped_examples() -> list[Example]:
    """Example files beside the schemas, then any ``examples`` array inside a schema."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for schema_name, topic in EXAMPLE_TOPICS.items():
        for path in sorted((CLICKSTREAM_EXAMPLES / schema_name).glob("*.json")):
            found.append((f"{schema_name}/{path.name}", topic, json.loads(path.read_text())))
        schema = json.loads((CLICKSTREAM / f"{schema_name}.json").read_text())
        for index, document in enumerate(schema.get("examples", [])):
            found.append((f"{schema_name}#examples[{index}]", topic, document))
    return [Example(n, t, d, EXPECTED_EVENTS.get(n)) for n, t, d in found]


EXAMPLES = shipped_examples()

#: Sample records: enough of them that every kind, both outcomes and every PII field occur.
SAMPLES = list(ClickstreamGenerator(seed=7, start=NOW - 600, visitors=200).records(400))


@pytest.fixture(scope="module")
def transformer() -> Transformer:
    built, _ = build_transformer(load_config(EXAMPLE_CONFIG, environ={}), clock=lambda: NOW)
    return built


def run(transformer: Transformer, topic: str, document: dict[str, Any]) -> RecordResult:
    return transformer.transform(topic, 0, 7, orjson.dumps(document))


def check_input_schema(transformer: Transformer, topic: str, document: dict[str, Any]) -> None:
    plan = transformer.plan(topic)
    assert plan is not None
    assert plan.validate_input is not None, f"{topic} has no input schema"
    plan.validate_input(document)


def outcome(result: RecordResult) -> str | None:
    """The one event the record became, None when filtered; fails on a rejection."""
    assert not result.rejected, [f"{r.stage}: {r.reason}" for r in result.rejected]
    assert len(result.events) <= 1
    return result.events[0].payload["event"] if result.events else None


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: user field of the event ← where config/example.yaml reads it in the record.
HASHED_SOURCES = {
    "email": ("user", "email"),
    "phone": ("user", "phone"),
    "external_id": ("user_id",),
}


def identifier_holders(document: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Each hashed field the record carries a value for: (the object holding it, its key)."""
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for field, path in HASHED_SOURCES.items():
        *parents, leaf = path
        holder = document
        for key in parents:
            holder = holder.get(key) or {}
        if holder.get(leaf) not in (None, ""):
            found[field] = (holder, leaf)
    return found


def prehashed(document: dict[str, Any], pad: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A copy with every email, phone and user id present replaced by an upper-case
    SHA-256 digest with ``pad`` around it; returns it and the digests expected out."""
    copy = json.loads(json.dumps(document))
    expected: dict[str, str] = {}
    for field, (holder, key) in identifier_holders(copy).items():
        digest = digest_of(f"{field}:{holder[key]}")
        holder[key] = pad + digest.upper() + pad
        expected[field] = digest
    return copy, expected


def assert_maps_to(result: RecordResult, document: dict[str, Any], event: str | None) -> None:
    """``document`` became ``event`` (None: filtered), keeping every identifier it has."""
    assert outcome(result) == event, document
    if event is not None:
        user = result.events[0].payload.get("user", {})
        missing = set(identifier_holders(document)) - set(user)
        assert not missing, f"left out of the event: {sorted(missing)}"


def test_every_shipped_example_has_an_expected_event() -> None:
    assert sorted(e.name for e in EXAMPLES) == sorted(EXPECTED_EVENTS)


def test_the_samples_cover_every_kind_outcome_and_hashed_field() -> None:
    seen = {(r.kind, r.expected_event) for r in SAMPLES}
    assert {kind for kind, _ in seen} == set(DEFAULT_TOPICS)
    assert ("page_view", None) in seen
    assert ("form_submit", None) in seen
    for kind in DEFAULT_TOPICS:
        records = [orjson.loads(r.value) for r in SAMPLES if r.kind == kind]
        for field in HASHED_SOURCES:
            assert any(field in identifier_holders(doc) for doc in records), (kind, field)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_example_passes_the_input_schema_and_maps_to_its_event(
    transformer: Transformer, example: Example
) -> None:
    check_input_schema(transformer, example.topic, example.document)
    result = run(transformer, example.topic, example.document)
    assert_maps_to(result, example.document, example.expected_event)


@pytest.mark.parametrize("kind", sorted(DEFAULT_TOPICS))
def test_sample_records_pass_the_input_schema_and_map_to_their_event(
    transformer: Transformer, kind: str
) -> None:
    records = [r for r in SAMPLES if r.kind == kind]
    assert records
    for record in records:
        document = orjson.loads(record.value)
        check_input_schema(transformer, record.topic, document)
        result = transformer.transform(record.topic, 0, 7, record.value)
        assert_maps_to(result, document, record.expected_event)


#: Bare: an upper-case digest. Padded: with spaces around it, which the mapping trims.
PADDING = pytest.mark.parametrize("pad", ["", "  "], ids=["bare", "padded"])


def assert_prehashed_passes(
    transformer: Transformer,
    topic: str,
    document: dict[str, Any],
    expected_event: str | None,
    pad: str,
) -> None:
    variant, digests = prehashed(document, pad)
    check_input_schema(transformer, topic, variant)
    result = run(transformer, topic, variant)
    assert_maps_to(result, variant, expected_event)
    if expected_event is not None:
        user = result.events[0].payload.get("user", {})
        assert {field: user.get(field) for field in digests} == digests


@PADDING
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_prehashed_example_passes_schema_and_mapping_and_keeps_the_digest(
    transformer: Transformer, example: Example, pad: str
) -> None:
    assert_prehashed_passes(
        transformer, example.topic, example.document, example.expected_event, pad
    )


@PADDING
@pytest.mark.parametrize("kind", sorted(DEFAULT_TOPICS))
def test_prehashed_sample_records_pass_schema_and_mapping_and_keep_the_digest(
    transformer: Transformer, kind: str, pad: str
) -> None:
    for record in (r for r in SAMPLES if r.kind == kind):
        document = orjson.loads(record.value)
        assert_prehashed_passes(transformer, record.topic, document, record.expected_event, pad)


def example(name: str) -> Example:
    (found,) = (e for e in EXAMPLES if e.name == name)
    return found


MAPPED = sorted(e.name for e in EXAMPLES if e.expected_event is not None)


@pytest.mark.parametrize("name", MAPPED)
@pytest.mark.parametrize(("raw", "text"), [(123, "123"), (123.0, "123")], ids=["int", "float"])
def test_numeric_event_id_passes_and_becomes_text(
    transformer: Transformer, name: str, raw: float, text: str
) -> None:
    shipped = example(name)
    document = dict(shipped.document, event_id=raw)
    check_input_schema(transformer, shipped.topic, document)
    result = run(transformer, shipped.topic, document)
    assert outcome(result) == shipped.expected_event
    assert result.events[0].payload["event_id"] == text


def set_path(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(document))
    *parents, leaf = path.split(".")
    holder = copy
    for key in parents:
        holder = holder[key]
    holder[leaf] = value
    return copy


@pytest.mark.parametrize(
    ("name", "source", "value_targets"),
    [
        ("page_view.v1/product_from_tiktok_ad.json", "product.price", ["value", "price"]),
        ("button_click.v1/add_to_wishlist_known_user.json", "product.price", ["value"]),
        ("form_submit.v1/contact_sales.json", "form.estimated_value", ["value"]),
    ],
)
@pytest.mark.parametrize("text", ["49.99", " 49.99 ", "+49.99", "4999e-2"])
def test_price_as_decimal_text_passes_and_becomes_a_number(
    transformer: Transformer, name: str, source: str, value_targets: list[str], text: str
) -> None:
    shipped = example(name)
    document = set_path(shipped.document, source, text)
    check_input_schema(transformer, shipped.topic, document)
    result = run(transformer, shipped.topic, document)
    assert outcome(result) == shipped.expected_event
    properties = result.events[0].payload["properties"]
    got = {"value": properties.get("value"), "price": properties["contents"][0].get("price")}
    assert {t: got[t] for t in value_targets} == dict.fromkeys(value_targets, 49.99)


@pytest.mark.parametrize(
    ("name", "source", "value"),
    [
        ("page_view.v1/product_from_tiktok_ad.json", "product.price", "-1"),
        ("page_view.v1/product_from_tiktok_ad.json", "product.price", "49,99"),
        ("page_view.v1/product_from_tiktok_ad.json", "product.price", "NaN"),
        ("page_view.v1/product_from_tiktok_ad.json", "product.price", "1e999x"),
        ("form_submit.v1/contact_sales.json", "form.estimated_value", "inf"),
        ("form_submit.v1/contact_sales.json", "form.estimated_value", ""),
    ],
)
def test_price_text_that_is_not_a_number_is_rejected_at_input_schema(
    transformer: Transformer, name: str, source: str, value: str
) -> None:
    shipped = example(name)
    result = run(transformer, shipped.topic, set_path(shipped.document, source, value))
    (rejection,) = result.rejected
    assert (rejection.stage, rejection.reason.split(":")[0]) == (Stage.INPUT_SCHEMA, source)


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("page_view.v1/product_from_tiktok_ad.json", "product.sku"),
        ("button_click.v1/start_trial.json", "button.id"),
        ("sign_up.v1/email_signup.json", "signup.plan"),
        ("form_submit.v1/contact_sales.json", "form.id"),
    ],
)
def test_content_ids_as_integers_pass_and_become_text(
    transformer: Transformer, name: str, source: str
) -> None:
    shipped = example(name)
    document = set_path(shipped.document, source, 4242)
    check_input_schema(transformer, shipped.topic, document)
    result = run(transformer, shipped.topic, document)
    assert outcome(result) == shipped.expected_event
    assert result.events[0].payload["properties"]["contents"][0]["content_id"] == "4242"


@pytest.mark.parametrize("name", MAPPED)
def test_integer_user_id_passes_and_is_hashed_as_its_text(
    transformer: Transformer, name: str
) -> None:
    shipped = example(name)
    document = dict(shipped.document, user_id=8841)
    check_input_schema(transformer, shipped.topic, document)
    result = run(transformer, shipped.topic, document)
    assert outcome(result) == shipped.expected_event
    assert result.events[0].payload["user"]["external_id"] == digest_of("8841")


@pytest.mark.parametrize("kind", sorted(EXAMPLE_TOPICS))
def test_hashed_fields_keep_a_protective_length_bound(transformer: Transformer, kind: str) -> None:
    name = next(e.name for e in EXAMPLES if e.name.startswith(kind) and e.expected_event)
    shipped = example(name)
    for path in ("user.email", "user.phone", "user_id"):
        document = set_path(dict(shipped.document, user={}), path, "x" * 1025)
        with pytest.raises(SchemaViolation) as caught:
            check_input_schema(transformer, shipped.topic, document)
        assert caught.value.path == path


# --- the decimal-text pattern against to_number ---------------------------------------


def price_schema_validator(kind: str, owner: str, field: str) -> Callable[[Any], None]:
    schema = json.loads((CLICKSTREAM / f"{kind}.json").read_text())
    node = schema["properties"][owner]["properties"][field]
    document = {"$schema": schema["$schema"], **node}
    return compile_validator(document, source=f"{kind}#{owner}.{field}")


PRICE_FIELDS = [
    ("page_view.v1", "product", "price"),
    ("button_click.v1", "product", "price"),
    ("form_submit.v1", "form", "estimated_value"),
]


def test_every_price_field_has_the_same_rule() -> None:
    nodes = []
    for kind, owner, field in PRICE_FIELDS:
        schema = json.loads((CLICKSTREAM / f"{kind}.json").read_text())
        node = dict(schema["properties"][owner]["properties"][field])
        node.pop("description")
        nodes.append(node)
    assert all(node == nodes[0] for node in nodes)


def schema_accepts(validate: Callable[[Any], None], value: Any) -> bool:
    try:
        validate(value)
    except SchemaViolation:
        return False
    return True


def mapping_accepts(value: Any) -> bool:
    try:
        to_number(value)
    except CoerceError:
        return False
    return True


VALIDATE_PRICE = price_schema_validator(*PRICE_FIELDS[0])


@given(st.text(alphabet="0123456789.+-eE_ \t\n", max_size=12))
@hypothesis_example("1e999")
@hypothesis_example("1_000")
@hypothesis_example("-0.0")
@hypothesis_example(" +.5e-3\n")
def test_decimal_text_pattern_agrees_with_to_number(text: str) -> None:
    in_schema = schema_accepts(VALIDATE_PRICE, text)
    in_mapping = mapping_accepts(text)
    if in_schema:
        # The one thing a pattern cannot see: a number too large for a double.
        assert in_mapping or math.isinf(float(text)), text
    elif in_mapping:
        # to_number parses with Python's float(), which also takes digit groups
        # ("1_000") and negative zero ("-0.0"); the schema keeps to plain decimals.
        assert "_" in text or text.strip().startswith("-"), text


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (49.99, True),
        (0, True),
        (-1, False),
        ("49.99", True),
        (" 49.99 ", True),
        ("+5", True),
        (".5", True),
        ("5.", True),
        ("1e3", True),
        ("1E-3", True),
        ("-1", False),
        ("inf", False),
        ("NaN", False),
        ("49,99", False),
        ("0x10", False),
        ("", False),
        ("  ", False),
        (True, False),
        (None, False),
    ],
)
def test_price_rule_accepts_what_to_number_accepts(value: Any, accepted: bool) -> None:
    assert (schema_accepts(VALIDATE_PRICE, value), mapping_accepts(value)) == (accepted, accepted)
