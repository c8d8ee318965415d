"""Fixtures of the browser tests: headless Chromium (Debian's, driven by Playwright) and the
integration fixtures they reuse (a real Kafka broker, the sandbox, the processor).

* ``open_browser`` (function): ``open_browser() -> Browser``, a playwright ``Page``
  (``browser.page``) in a fresh Chromium profile in ``tmp_path``, 1280x800, and the errors
  its console showed (``browser.console_errors``: a page that breaks its own
  Content-Security-Policy says so there); closed after the test. Chromium is Debian's
  ``/usr/bin/chromium`` (`devkit.browser`), launched with `devkit.browser.CHROMIUM_ARGS`;
  Playwright never downloads a browser here. When the browser is missing the test calling
  it fails (it does not skip), naming the command that installs it: CI runs that first.
* ``kafka_bootstrap``, ``new_topic``, ``sandbox``, ``make_pipeline``, ``processors``: as in
  ``tests/integration/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

from devkit.browser import CHROMIUM_ARGS, BrowserError, require
from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    kafka_bootstrap,
    make_pipeline,
    new_topic,
    processors,
    sandbox,
)

VIEWPORT = {"width": 1280, "height": 800}


@dataclass
class Browser:
    page: Page
    console_errors: list[str] = field(default_factory=list)


@pytest.fixture
def open_browser(tmp_path: Path) -> Iterator[Callable[[], Browser]]:
    with ExitStack() as stack:

        def open_() -> Browser:
            try:
                chromium = require()
            except BrowserError as exc:
                missing = str(exc)
            else:
                missing = ""
            if missing:
                pytest.fail(missing, pytrace=False)
            playwright = stack.enter_context(sync_playwright())
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
                executable_path=str(chromium),
                headless=True,
                args=list(CHROMIUM_ARGS),
                viewport=VIEWPORT,
                timeout=60_000,
            )
            stack.callback(context.close)
            browsing = Browser(context.new_page())

            def collect(message: ConsoleMessage) -> None:
                if message.type == "error":
                    browsing.console_errors.append(message.text)

            browsing.page.on("console", collect)
            return browsing

        yield open_
