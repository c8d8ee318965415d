"""``tiktok.pixels``: a token per pixel. Loading the tenants, every mistake named with its
entry, each token read (and re-read) from its own file or variable, and never shown."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processor.config import Secret, load_config
from processor.errors import ConfigError
from tests.conftest import ROOT

WriteConfig = Callable[..., Path]

EU = "CEU7PIXEL0000000001"
US = "CUS7PIXEL0000000002"
EU_TOKEN = "tok-eu-0a0a0a0a-never-show-me"
US_TOKEN = "tok-us-0b0b0b0b-never-show-me"


def problems(path: Path, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return list(caught.value.problems)


@pytest.fixture
def with_pixels(tmp_path: Path, example_raw: dict[str, Any]) -> dict[str, Any]:
    """The example configuration with shop-eu (a token file beside it) and shop-us (a
    variable) listed."""
    (tmp_path / "eu-token").write_text(EU_TOKEN + "\n")
    example_raw["tiktok"]["pixels"] = [
        {"name": "shop-eu", "event_source_id": EU, "access_token_file": "eu-token"},
        {"name": "shop-us", "event_source_id": US, "access_token_env": "US_TOKEN"},
    ]
    return example_raw


def test_each_listed_pixel_gets_its_own_token_from_its_file_or_variable(
    tmp_path: Path, with_pixels: dict[str, Any], write_config: WriteConfig
) -> None:
    environ = {"TIKTOK_ACCESS_TOKEN": "tok-default", "US_TOKEN": f" {US_TOKEN}\n"}
    config = load_config(write_config(with_pixels), environ=environ, require_token=True)
    eu, us = config.tiktok.pixels
    assert (eu.name, eu.event_source_id, us.name, us.event_source_id) == (
        "shop-eu", EU, "shop-us", US,
    )  # fmt: skip
    assert eu.access_token.file == tmp_path / "eu-token"  # relative to the configuration
    assert eu.access_token.current() == Secret(EU_TOKEN)
    assert us.access_token.current() == Secret(US_TOKEN)
    assert us.access_token.source() == "environment variable US_TOKEN (set)"
    assert config.tiktok.access_token.current() == Secret("tok-default")
    (tmp_path / "eu-token").write_text("tok-eu-rotated")  # rotated on its own
    assert eu.access_token.current() == Secret("tok-eu-rotated")
    assert config.tiktok.access_token.current() == Secret("tok-default")


def test_without_pixels_there_are_no_tenants_but_the_default(
    example_raw: dict[str, Any], write_config: WriteConfig
) -> None:
    assert load_config(write_config(example_raw), environ={}).tiktok.pixels == ()


def test_every_mistake_in_the_list_is_named_with_its_entry_at_once(
    with_pixels: dict[str, Any], write_config: WriteConfig
) -> None:
    pixels = with_pixels["tiktok"]["pixels"]
    pixels += [
        {"name": "shop-eu", "event_source_id": EU, "access_token_env": "X"},  # both dupes
        {"name": "shop-fr", "event_source_id": "CFR7PIXEL0000000003",
         "access_token_file": "fr", "access_token_env": "FR_TOKEN"},
        {"name": "shop-de", "event_source_id": "CDE7PIXEL0000000004"},
        {"name": "default", "event_source_id": "CXX7PIXEL0000000005", "access_token_env": "Y"},
        {"name": "Shop UK", "event_source_id": "CUK7PIXEL0000000006", "access_token_env": "Z"},
        {"name": "shop-it", "event_source_id": "not a pixel", "acces_token_file": "it"},
    ]  # fmt: skip
    found = problems(write_config(with_pixels), environ={})
    assert "tiktok.pixels[2].name: 'shop-eu' is already used by tiktok.pixels[0]" in found
    assert (
        f"tiktok.pixels[2].event_source_id: '{EU}' is already listed by tiktok.pixels[0]" in found
    )
    assert (
        "tiktok.pixels[3].access_token_env: give access_token_file or access_token_env, not both"
        in found
    )
    assert "tiktok.pixels[4].access_token_file: required (or access_token_env)" in found
    assert any(p.startswith("tiktok.pixels[5].name: 'default' is the default token") for p in found)
    assert any(p.startswith("tiktok.pixels[6].name: ") for p in found)  # not a slug
    assert any(p.startswith("tiktok.pixels[7].event_source_id: ") for p in found)
    assert any(
        p.startswith("tiktok.pixels[7].acces_token_file: unknown setting; did you mean "
                     "access_token_file?")
        for p in found
    )  # fmt: skip
    assert len(found) == 8, found  # nothing else: the valid entries and sections are fine


def test_a_pixel_mistake_hides_nothing_else_of_the_tiktok_section(
    with_pixels: dict[str, Any], write_config: WriteConfig
) -> None:
    with_pixels["tiktok"]["pixels"][1]["name"] = "US"
    with_pixels["tiktok"]["access_token_file"] = "absent-default-token"
    found = problems(write_config(with_pixels), environ={"US_TOKEN": "t"}, require_token=True)
    assert any(p.startswith("tiktok.pixels[1].name: ") for p in found)
    assert any(p.startswith("tiktok.access_token_file: no access token in file ") for p in found)


def test_run_needs_every_pixels_token_and_says_whose_is_missing(
    tmp_path: Path, with_pixels: dict[str, Any], write_config: WriteConfig
) -> None:
    (tmp_path / "eu-token").unlink()
    path = write_config(with_pixels)
    assert load_config(path, environ={}).tiktok.pixels  # offline: mounted where it runs
    found = problems(path, environ={"TIKTOK_ACCESS_TOKEN": "d"}, require_token=True)
    assert found == [
        f"tiktok.pixels[0].access_token_file: no access token in file {tmp_path / 'eu-token'} "
        "(not found)",
        "tiktok.pixels[1].access_token_env: no access token in environment variable US_TOKEN "
        "(not set)",
    ]
    (tmp_path / "eu-token").write_text("")
    found = problems(
        path, environ={"TIKTOK_ACCESS_TOKEN": "d", "US_TOKEN": "u"}, require_token=True
    )
    assert found == [
        f"tiktok.pixels[0].access_token_file: no access token in file {tmp_path / 'eu-token'} "
        "(the file is empty)"
    ]
    (tmp_path / "eu-token").unlink()
    (tmp_path / "eu-token").mkdir()
    found = problems(path, environ={})
    assert found == [f"tiktok.pixels[0].access_token_file: {tmp_path / 'eu-token'} is a directory"]


def test_no_pixels_token_shows_in_the_config_its_problems_or_check_config(
    tmp_path: Path, with_pixels: dict[str, Any], write_config: WriteConfig
) -> None:
    environ = {"TIKTOK_ACCESS_TOKEN": "tok-default-0c0c0c0c", "US_TOKEN": US_TOKEN}
    path = write_config(with_pixels)
    config = load_config(path, environ=environ, require_token=True)
    shown = [repr(config), str(config.tiktok), repr(config.tiktok.pixels)]
    with_pixels["tiktok"]["pixels"][0]["name"] = "shop-us"
    shown += problems(write_config(with_pixels, "duplicate.yaml"), environ=environ)
    check = subprocess.run(
        [sys.executable, "-m", "processor", "check-config", str(path)],
        cwd=ROOT, env={"US_TOKEN": US_TOKEN, "PATH": ""}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert f"pixel shop-eu ({EU}): token from file {tmp_path / 'eu-token'}" in check.stdout
    assert f"pixel shop-us ({US}): token from environment variable US_TOKEN (set)" in check.stdout
    shown += [check.stdout, check.stderr]
    for token in (EU_TOKEN, US_TOKEN, "tok-default-0c0c0c0c"):
        assert not any(token in text for text in shown)
