"""Every schema is a valid JSON Schema and every example document validates against it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from processor.errors import ConfigError, SchemaViolation
from processor.schemas import (
    compile_file,
    compile_validator,
    tiktok_event_validator,
    tiktok_request_validator,
)
from tests.conftest import EXAMPLE_CONFIG, SCHEMAS

SCHEMA_FILES = sorted(p for p in SCHEMAS.rglob("*.json") if "examples" not in p.parts)


def examples_of(schema: Path) -> list[Path]:
    return sorted((schema.parent / "examples" / schema.stem).glob("*.json"))


@pytest.mark.parametrize("schema", SCHEMA_FILES, ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_schema_is_a_valid_json_schema(schema: Path) -> None:
    document = json.loads(schema.read_text())
    jsonschema.validators.validator_for(document).check_schema(document)
    compile_file(schema)


EXAMPLES = [(s, e) for s in SCHEMA_FILES for e in examples_of(s)]


@pytest.mark.parametrize(("schema", "example"), EXAMPLES, ids=lambda p: str(p.relative_to(SCHEMAS)))
def test_example_validates_against_its_schema(schema: Path, example: Path) -> None:
    document = json.loads(example.read_text())
    # Two independent validators agree: the reference one and the hot-path one.
    jsonschema.validate(document, json.loads(schema.read_text()))
    compile_file(schema)(document)


def test_every_data_schema_has_examples() -> None:
    data_schemas = [s for s in SCHEMA_FILES if s.name != "config.schema.json"]
    assert data_schemas
    for schema in data_schemas:
        assert len(examples_of(schema)) >= 2, f"{schema} needs example documents"


def test_example_config_validates_against_config_schema() -> None:
    schema = json.loads((SCHEMAS / "config.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(EXAMPLE_CONFIG.read_text()), schema)


def test_tiktok_validator_names_the_bad_event_and_field_without_its_value() -> None:
    body = json.loads((SCHEMAS / "tiktok/examples/event_track.v1.3/view_content.json").read_text())
    body["data"].append(dict(body["data"][0], event_id=12345))
    with pytest.raises(SchemaViolation) as caught:
        tiktok_request_validator()(body)
    assert caught.value.path == "data[1].event_id"
    assert "12345" not in str(caught.value)


def test_event_validator_rejects_unhashed_email_and_millisecond_time() -> None:
    validate = tiktok_event_validator()
    event = {"event": "Lead", "event_time": 1_767_225_600, "event_id": "x"}
    validate(event)
    with pytest.raises(SchemaViolation) as caught:
        validate(dict(event, user={"email": "someone@example.com"}))
    assert caught.value.path == "user.email"
    assert "someone" not in str(caught.value)
    with pytest.raises(SchemaViolation, match="event_time"):
        validate(dict(event, event_time=1_767_225_600_000))


def test_remote_refs_are_never_fetched() -> None:
    with pytest.raises(ConfigError):
        compile_validator({"$ref": "https://example.com/schema.json"}, source="remote")
