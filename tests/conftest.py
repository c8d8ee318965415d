"""Fixtures shared by every test: paths, the example configuration, a fixed clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = ROOT / "config" / "example.yaml"
SCHEMAS = ROOT / "schemas"
CLICKSTREAM_EXAMPLES = SCHEMAS / "clickstream" / "examples"

#: Ten minutes after the schemas' example records (2026-01-01T00:00:00Z).
EXAMPLES_NOW = 1_767_225_600 + 600

#: Topic of each clickstream example folder in config/example.yaml.
EXAMPLE_TOPICS = {
    "page_view.v1": "web.pageviews",
    "button_click.v1": "web.clicks",
    "sign_up.v1": "web.signups",
    "form_submit.v1": "web.forms",
}


@pytest.fixture
def example_raw() -> dict[str, object]:
    """config/example.yaml as a mutable dict, to derive variants from."""
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert isinstance(raw, dict)
    return raw


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, object]], Path]:
    """Writes a config dict as YAML; schema paths still resolve to the repo's schemas/."""

    def write(raw: dict[str, object], name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
