"""The customer fields beyond email, phone and external_id, through a mapping: names
and zip codes hashed from their normal form, city/state/country normalised, click ids
trimmed, each pre-hashed value passing through (padded, any case)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import yaml

from processor.config import Config, load_config
from processor.transform import build_transformer
from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLE_CONFIG
from tests.unit.test_cli import cli

LEAD = json.loads((CLICKSTREAM_EXAMPLES / "form_submit.v1" / "contact_sales.json").read_text())
FIELDS = {
    "user.first_name": "user.first",
    "user.last_name": "user.last",
    "user.zip_code": "user.zip",
    "user.city": "user.city",
    "user.state": "user.state",
    "user.country": "user.country",
    "user.ttclid": {"first": ["context.ttclid", {"from_url": "page.url", "param": "ttclid"}]},
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def user_of(**user: Any) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    config: Config = load_config(EXAMPLE_CONFIG, environ={})
    forms = [m for m in config.mappings if m.topic == "web.forms"]
    mappings = tuple(replace(m, fields={**m.fields, **FIELDS}) for m in forms)
    transformer, _ = build_transformer(replace(config, mappings=mappings), lambda: 1_767_225_900.0)
    page = user.pop("page", LEAD["page"])
    record = {**LEAD, "page": page, "user": {**LEAD["user"], **user}}
    (event,) = transformer.transform("web.forms", 0, 1, orjson.dumps(record)).events
    return event.payload["user"], event.dropped


def test_names_zip_and_places_are_normalised_as_documented() -> None:
    user, dropped = user_of(
        first=" Jean-Paul ", last="O\u2019Bri\u0065\u0301n", zip=" SW1A 1AA ",
        city="  New\u00a0 York ", state="NY", country="US",
    )  # fmt: skip
    assert dropped == ()
    assert user["first_name"] == sha("jeanpaul")
    assert user["last_name"] == sha("obri\u00e9n")  # NFC: the composed é
    assert user["zip_code"] == sha("sw1a1aa")
    assert (user["city"], user["state"], user["country"]) == ("new york", "ny", "us")


def test_pre_hashed_names_and_zips_pass_through_lower_cased() -> None:
    digest = sha("jeanpaul")
    user, _ = user_of(first=f"  {digest.upper()}  ", zip=digest.upper())
    assert user["first_name"] == digest
    assert user["zip_code"] == digest


def test_an_unknown_country_is_dropped_not_the_event() -> None:
    user, dropped = user_of(country="XX")
    assert "country" not in user
    assert [field for field, _ in dropped] == ["user.country"]


def test_the_ttclid_is_trimmed_and_found_in_the_url_fragment() -> None:
    page = {**LEAD["page"], "url": "https://example.org/contact#ttclid=%20E.C.P.frag%20"}
    user, _ = user_of(page=page)
    assert user["ttclid"] == "E.C.P.frag"


def test_an_email_with_invisible_characters_hashes_as_the_clean_address() -> None:
    user, _ = user_of(email="lead.form\u200b@example.org\ufeff")
    assert user["email"] == sha("lead.form@example.org")


def test_check_config_knows_the_new_targets(tmp_path: Path) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["mappings"][3]["fields"]["user.first_nme"] = "user.first"
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(raw))
    done = cli("check-config", str(path))
    assert done.returncode == 1
    assert "did you mean user.first_name?" in done.stdout + done.stderr
