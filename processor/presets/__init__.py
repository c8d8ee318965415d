"""Mapping presets: the clickstream shapes sites already produce, mapped in one line.

A mapping that says ``preset: NAME`` is expanded here, before it is compiled, into one
ordinary mapping per TikTok event of the preset's event table. Each preset is a YAML
file beside this module (``segment.yaml``, ``snowplow.yaml``, ``ga4.yaml``)::

    description: what the shape is          # and the public specification it follows
    schema: presets/segment.v1.json         # the input JSON Schema, under schemas/
    event_id: messageId                     # where the event id is (a field path)
    select: event                           # the field whose value picks the TikTok event
    for_each: events                        # optional: one event per element of this list
    when: {field: type, equals: track}      # optional: a rule every record must pass
    events:                                 # the source's event name → TikTok event
      Product Viewed: ViewContent
    fields: {…}                             # the fields of every event
    event_fields:                           # more fields for one TikTok event
      Purchase: {…}

Everything is overridable from the mapping that names the preset: ``events`` entries
are added to the table (``null`` removes one), ``fields`` entries are laid over the
preset's (``null`` removes one), ``when`` is required on top of the preset's rule, and
``event_id``, ``for_each`` and ``schema`` replace the preset's. The expanded mappings are
named ``NAME.<event in snake case>`` (``shop.view_content``) and keep the position of the
mapping that named the preset, so a problem in them points at the line the user wrote.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

from processor.safeyaml import read_yaml_file

PRESETS_DIR: Final = Path(__file__).resolve().parent

#: The keys of a mapping that a preset passes through to every mapping it expands to.
PASSED_THROUGH: Final = (
    "topic",
    "event_source",
    "event_source_id",
    "pixel_code",
    "test_event_code",
    "limited_data_use",
    "on_invalid_identifier",
)


@dataclass(frozen=True, slots=True)
class Preset:
    """One preset as its file says it."""

    name: str
    description: str
    schema: str
    event_id: str | None
    select: str
    events: Mapping[str, str]
    fields: Mapping[str, Any]
    event_fields: Mapping[str, Mapping[str, Any]]
    for_each: str | None = None
    when: Mapping[str, Any] | None = None


def preset_names() -> tuple[str, ...]:
    """The presets shipped with the processor, sorted."""
    return tuple(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))


@cache
def load_preset(name: str) -> Preset:
    """The preset called ``name`` (a file of this package: a bad one is a bug here, so it
    raises ``KeyError``/``TypeError`` rather than reporting a user's problem)."""
    raw = read_yaml_file(PRESETS_DIR / f"{name}.yaml")
    return Preset(
        name=name,
        description=str(raw["description"]).strip(),
        schema=raw["schema"],
        event_id=raw.get("event_id"),
        select=raw["select"],
        events=dict(raw["events"]),
        fields=dict(raw["fields"]),
        event_fields={k: dict(v) for k, v in (raw.get("event_fields") or {}).items()},
        for_each=raw.get("for_each"),
        when=raw.get("when"),
    )


def snake_case(event: str) -> str:
    """``CompleteRegistration`` → ``complete_registration``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", event).lower()


def _all_of(rules: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    return rules[0] if len(rules) == 1 else {"all": rules}


def expand(mapping: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ordinary mappings that a mapping naming a preset stands for, in the order of
    the preset's event table (then the user's added entries). The mapping has passed the
    configuration schema, so its preset exists and its keys have their types."""
    preset = load_preset(mapping["preset"])
    table = dict(preset.events)
    for source_name, event in (mapping.get("events") or {}).items():
        if event is None:
            table.pop(source_name, None)
        else:
            table[source_name] = event
    names_of: dict[str, list[str]] = {}
    for source_name, event in table.items():
        names_of.setdefault(event, []).append(source_name)
    expanded = []
    for event, names in names_of.items():
        selected: dict[str, Any] = (
            {"field": preset.select, "equals": names[0]}
            if len(names) == 1
            else {"field": preset.select, "in": names}
        )
        rules = [r for r in (preset.when, selected, mapping.get("when")) if r is not None]
        fields = {
            **preset.fields,
            **preset.event_fields.get(event, {}),
            **mapping.get("fields", {}),
        }
        # Each expanded mapping gets its own copy: the preset is cached and shared, and
        # one object in several mappings would print as YAML anchors in check-config.
        one: dict[str, Any] = {
            "name": f"{mapping['name']}.{snake_case(event)}",
            "preset": preset.name,
            "schema": mapping.get("schema", preset.schema),
            "when": copy.deepcopy(_all_of(rules)),
            "event": event,
            "fields": copy.deepcopy({k: v for k, v in fields.items() if v is not None}),
        }
        event_id = mapping.get("event_id", preset.event_id)
        if event_id is not None:
            one["event_id"] = event_id
        # A for_each written beside a preset that has none is the user's too, not dropped.
        for_each = mapping.get("for_each", preset.for_each)
        if for_each is not None:
            one["for_each"] = for_each
        one.update({k: mapping[k] for k in PASSED_THROUGH if k in mapping})
        expanded.append(one)
    return expanded
