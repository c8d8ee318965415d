"""The sandbox's Test Events page in headless Chromium, fed through the whole pipeline:
sample records on a real Kafka broker, ``tiktok-events run`` delivering them to the
sandbox, and what a person looking at http://sandbox/ sees while they arrive."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Locator, Page, expect

from processor.kafka.producer import produce_sample
from processor.sample import SampleRecord, generate
from processor.sandbox import Sandbox, page
from tests.browser.conftest import Browser
from tests.conftest import ROOT
from tests.integration.pipeline import MakePipeline, ProcessorProcess, dead_letters, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.kafka]

SCREENSHOT = ROOT / ".cache" / "test-events-page.png"
#: The sign-ups go to a pixel of their own, so a pixel filter has something to narrow.
SIGN_UP_PIXEL = "C9ZZZZ7777XXXXXXXXXX"
TEST_CODE = "TEST42"
#: How long the page may take to show what the sandbox has (it polls every second).
SHOWN_MS = 15_000


def event_id(record: SampleRecord) -> str:
    value: str = orjson.loads(record.value)["event_id"]
    return value


def rows(tab: Page, status: str | None = None) -> Locator:
    selector = '[data-testid="event-row"]'
    return tab.locator(selector if status is None else f'{selector}[data-status="{status}"]')


def shown_rows(tab: Page) -> list[dict[str, Any]]:
    """What each row of the table says, top to bottom."""
    found: list[dict[str, Any]] = tab.evaluate(
        """() => Array.from(document.querySelectorAll('[data-testid="event-row"]')).map((tr) => ({
            key: tr.dataset.key,
            status: tr.dataset.status,
            event: tr.dataset.event,
            event_id: tr.querySelector("td:nth-child(2) .small")?.textContent ?? null,
            pixel: tr.children[3].textContent,
            test_event_code: tr.children[4].textContent,
            match_keys: Array.from(tr.querySelectorAll(".key")).map((k) => k.textContent),
            answer: tr.querySelector('[data-testid="answer"]').textContent,
        }))"""
    )
    return found


def accepted_test_events(sandbox: Sandbox) -> Counter[str]:
    return Counter(sandbox.stats()["test_events"]["by_event"])


def test_the_page_shows_the_events_the_processor_delivers_as_they_arrive(
    open_browser: Callable[[], Browser],
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
) -> None:
    browser = open_browser()
    pipeline = make_pipeline(
        partitions=1,
        event_source_ids={"sign_up": SIGN_UP_PIXEL},
        tiktok={"test_event_code": TEST_CODE},
        delivery={"max_batch_events": 20},
    )
    records, expected = generate(120, seed=4, start=time.time() - 60, topics=pipeline.topics)
    events = [r for r in records if r.expected_event]
    # After the rest: the last page view again (a replay, as after a crash: TikTok keeps the
    # first), and a button click TikTok refuses (the processor bisects its batch and
    # dead-letters it).
    repeated = next(r for r in reversed(events) if r.expected_event == "ViewContent")
    refused = next(r for r in reversed(events) if r.expected_event == "ClickButton")
    sandbox.set_faults(f"reject={event_id(refused)}")
    delivered = expected - Counter([refused.expected_event])
    assert delivered["CompleteRegistration"]
    assert delivered["Lead"]
    total = sum(delivered.values())

    tab = browser.page
    tab.goto(sandbox.url + "/")
    tab.evaluate("() => { window.loadedOnce = true; }")
    expect(tab.get_by_test_id("live")).to_have_attribute("data-state", "live")
    expect(rows(tab)).to_have_count(0)

    produce_sample(pipeline.bootstrap, [r for r in records if r is not refused])
    processor = processors(pipeline)
    wait_for(lambda: accepted_test_events(sandbox) == delivered, 60, f"delivery of {delivered}")
    expect(rows(tab, "first_seen")).to_have_count(total, timeout=SHOWN_MS)
    expect(rows(tab)).to_have_count(total)

    produce_sample(pipeline.bootstrap, [repeated, refused])
    wait_for(lambda: len(dead_letters(pipeline)) == 1, 30, "the refused event dead-lettered")
    wait_for(lambda: sandbox.stats()["test_events"]["duplicates"] == 1, 30, "the duplicate")
    assert accepted_test_events(sandbox) == delivered

    # The new rows arrive on top, without a reload.
    expect(rows(tab, "duplicate")).to_have_count(1, timeout=SHOWN_MS)
    expect(rows(tab, "duplicate").filter(has_text=event_id(repeated))).to_have_count(1)
    expect(rows(tab, "first_seen").filter(has_text=event_id(repeated))).to_have_count(1)
    expect(rows(tab, "rejected").filter(has_text=event_id(refused)).first).to_be_visible()
    expect(rows(tab, "first_seen").filter(has_text=event_id(refused))).to_have_count(0)
    expect(rows(tab, "first_seen")).to_have_count(total)
    assert tab.evaluate("() => window.loadedOnce === true")
    expect(tab.locator("#t-accepted")).to_have_text(str(total))
    expect(tab.locator("#t-duplicates")).to_have_text("1")
    refusals = sandbox.stats()["requests"]["by_code"]["40002"]
    expect(tab.locator("#t-refused")).to_have_text(str(refusals))

    # Counts by event at the top.
    for name, count in delivered.items():
        chip = tab.locator(f'[data-testid="count"][data-event="{name}"]')
        expect(chip).to_contain_text(f"{count} first seen")
    expect(tab.locator('[data-testid="count"][data-event="ViewContent"]')).to_contain_text("1 dup")
    expect(tab.locator('[data-testid="count"][data-event="ClickButton"]')).to_contain_text(
        "rejected"
    )
    newest = shown_rows(tab)[:4]
    assert {row["status"] for row in newest} == {"rejected", "duplicate"}

    # Newest first, as the feed has them; each row as the sandbox received it.
    feed = httpx.get(sandbox.url + page.FEED_PATH, timeout=10).json()
    table = shown_rows(tab)
    assert [row["key"] for row in table] == [row["key"] for row in feed["events"]]
    documents = {e["event"]["event_id"]: e for e in sandbox.events(scope="test", limit=1000)}
    for row in table:
        assert row["test_event_code"] == TEST_CODE
        if row["status"] != "first_seen":
            continue
        stored = documents[row["event_id"]]
        assert row["event"] == stored["event"]["event"]
        assert row["pixel"] == stored["pixel"]
        assert row["match_keys"] == page.match_keys(stored["event"]["user"])
        assert "ip+ua" in row["match_keys"]  # every sample visitor has both
    assert any("email" in row["match_keys"] for row in table)

    # A refused request shows TikTok's code and message, as the sandbox answered them.
    answers = {row["key"]: row for row in feed["events"] if row["status"] == "rejected"}
    for row in table:
        if row["status"] == "rejected":
            answer = answers[row["key"]]
            assert answer["code"] == 40002
            assert row["answer"] == f"40002{answer['message']}"
            assert "refused by the sandbox" in row["answer"]

    # Filters narrow the list.
    tab.get_by_test_id("filter-pixel").select_option(SIGN_UP_PIXEL)
    expect(rows(tab)).to_have_count(delivered["CompleteRegistration"], timeout=SHOWN_MS)
    assert {(r["pixel"], r["event"]) for r in shown_rows(tab)} == {
        (SIGN_UP_PIXEL, "CompleteRegistration")
    }
    tab.get_by_test_id("filter-pixel").select_option("")
    tab.get_by_test_id("filter-event").select_option("Lead")
    expect(rows(tab)).to_have_count(delivered["Lead"], timeout=SHOWN_MS)
    assert {r["event"] for r in shown_rows(tab)} == {"Lead"}
    tab.get_by_test_id("filter-event").select_option("")
    tab.get_by_test_id("filter-test-code").select_option("~live")
    expect(rows(tab)).to_have_count(0, timeout=SHOWN_MS)
    tab.get_by_test_id("filter-test-code").select_option(TEST_CODE)
    expect(rows(tab)).to_have_count(len(table), timeout=SHOWN_MS)

    tab.get_by_test_id("filter-test-code").select_option("")
    expect(rows(tab)).to_have_count(len(table), timeout=SHOWN_MS)
    tab.wait_for_timeout(1500)  # the newest rows' highlight fades
    SCREENSHOT.parent.mkdir(exist_ok=True)
    tab.screenshot(path=str(SCREENSHOT))
    assert browser.console_errors == []

    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
