"""Records built to hurt: a pattern that backtracks forever, ids past 64 bits.

Each goes the whole way a Kafka record goes (raw bytes → orjson → input schema →
mapping) through the example configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.transform import RecordResult, Transformer, load_pipeline
from processor.types import Stage
from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLES_NOW

WriteConfig = Callable[[dict[str, Any]], Path]

PAGEVIEWS = "web.pageviews"


def pipeline(raw_config: dict[str, Any], write_config: WriteConfig) -> Transformer:
    _, transformer, _ = load_pipeline(
        write_config(raw_config), clock=lambda: float(EXAMPLES_NOW), environ={}
    )
    return transformer


def product_view(**raw_numbers: str) -> bytes:
    """The example product page view; ``product__sku="12"`` makes product.sku the raw
    JSON number 12 (written as text, so orjson, not Python, decides what it becomes)."""
    doc = json.loads(
        (CLICKSTREAM_EXAMPLES / "page_view.v1" / "product_from_tiktok_ad.json").read_text()
    )
    for dotted in raw_numbers:
        *parents, leaf = dotted.split("__")
        node = doc
        for name in parents:
            node = node[name]
        node[leaf] = f"<{dotted}>"
    raw = orjson.dumps(doc)
    for dotted, number in raw_numbers.items():
        raw = raw.replace(f'"<{dotted}>"'.encode(), number.encode())
    return raw


def rejected(result: RecordResult) -> tuple[str, str]:
    assert not result.events
    (invalid,) = result.rejected
    return str(invalid.stage), invalid.reason


@pytest.mark.timeout(5)
def test_a_backtracking_pattern_cannot_stall_the_consumer(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    page_views = example_raw["mappings"][0]
    page_views.pop("schema")  # the schema caps page.title at 512 characters
    page_views["when"] = {"field": "page.title", "regex": "^(a+)+$"}
    transformer = pipeline(example_raw, write_config)

    def view_titled(title: str) -> bytes:
        doc = orjson.loads(product_view())
        doc["page"]["title"] = title
        return orjson.dumps(doc)

    assert transformer.transform(PAGEVIEWS, 0, 1, view_titled("a" * 100_000 + "!")).filtered
    (event,) = transformer.transform(PAGEVIEWS, 0, 2, view_titled("a" * 100_000)).events
    assert event.event == "ViewContent"


def test_skus_past_64_bits_are_dead_lettered_not_rounded_together(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    transformer = pipeline(example_raw, write_config)
    # The page view schema allows integer skus; orjson decodes these two to one float.
    for offset, sku in enumerate(("18446744073709551617", "18446744073709551618")):
        result = transformer.transform(PAGEVIEWS, 0, offset, product_view(product__sku=sku))
        assert rejected(result) == (
            Stage.MAPPING,
            "properties.contents[0].content_id (from product.sku): "
            "integer too large to be exact; send ids as strings",
        )
    ids = []
    for offset, sku in enumerate(("18446744073709551614", "18446744073709551615")):
        (event,) = transformer.transform(
            PAGEVIEWS, 0, offset, product_view(product__sku=sku)
        ).events
        ids.append(event.payload["properties"]["contents"][0]["content_id"])
    assert ids == ["18446744073709551614", "18446744073709551615"]


def test_event_ids_past_64_bits_are_dead_lettered_not_deduplicated_away(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    example_raw["mappings"][0].pop("schema")  # the schema wants a text event_id
    transformer = pipeline(example_raw, write_config)
    for offset, event_id in enumerate(("18446744073709551617", "18446744073709551618")):
        result = transformer.transform(PAGEVIEWS, 0, offset, product_view(event_id=event_id))
        assert rejected(result) == (
            Stage.MAPPING,
            "event_id: integer too large to be exact; send ids as strings",
        )
    (event,) = transformer.transform(
        PAGEVIEWS, 0, 9, product_view(event_id="18446744073709551615")
    ).events
    assert event.payload["event_id"] == "18446744073709551615"
