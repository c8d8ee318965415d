"""Tokens per pixel end to end: a real Kafka broker, the sandbox over HTTP with a token per
pixel, and ``tiktok-events run`` as a subprocess. One pixel's token is revoked: its events
are held (nothing committed past them, nothing dead-lettered) while the other pixel's keep
being delivered and committed; its token file is fixed and everything arrives, once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from processor.sandbox import Sandbox, Token
from tests.integration.pipeline import (
    TOKEN,
    MakePipeline,
    Pipeline,
    ProcessorProcess,
    all_committed,
    dead_letters,
    end_offsets,
    wait_for,
)

PIXEL_A = "CSHOPAPIXEL00000001"  # page views
PIXEL_B = "CSHOPBPIXEL00000002"  # sign-ups, clicks and forms
TOKEN_A = "tok-pipeline-shop-a"
TOKEN_A_ROTATED = "tok-pipeline-shop-a-rotated"
TOKEN_B = "tok-pipeline-shop-b"
#: The event each record kind's mapping makes (config/example.yaml).
EVENTS_OF_A = {"ViewContent"}


def per_pixel(expected: Counter[str]) -> Counter[str]:
    """Expected events by event name → by pixel."""
    out: Counter[str] = Counter()
    for event, count in expected.items():
        out[PIXEL_A if event in EVENTS_OF_A else PIXEL_B] += count
    return out


def committed_all(pipeline: Pipeline, kinds: tuple[str, ...]) -> bool:
    return all(
        all(
            pipeline.committed(kind).get(p, 0) >= end
            for p, end in end_offsets(pipeline, kind).items()
        )
        for kind in kinds
    )


def test_a_revoked_pixel_is_held_while_the_other_flows_and_resumes_when_its_file_is_fixed(
    make_pipeline: MakePipeline, processors: Callable[..., ProcessorProcess], sandbox: Sandbox
) -> None:
    sandbox.set_tokens([
        Token(TOKEN, label="default"),
        Token(TOKEN_A, label="shop-a", pixels=frozenset({PIXEL_A})),
        Token(TOKEN_B, label="shop-b", pixels=frozenset({PIXEL_B})),
    ])  # fmt: skip
    pipeline = make_pipeline(
        partitions=2,
        tiktok={
            "pixels": [
                {"name": "shop-a", "event_source_id": PIXEL_A, "access_token_file": "token-a"},
                {"name": "shop-b", "event_source_id": PIXEL_B, "access_token_file": "token-b"},
            ]
        },
        event_source_ids={
            "page_view": PIXEL_A, "sign_up": PIXEL_B, "button_click": PIXEL_B,
            "form_submit": PIXEL_B,
        },
    )  # fmt: skip
    token_a, token_b = pipeline.workdir / "token-a", pipeline.workdir / "token-b"
    token_a.write_text(TOKEN_A + "\n")
    token_b.write_text(TOKEN_B + "\n")
    b_kinds = ("sign_up", "button_click", "form_submit")

    # Both pixels flow, each with its own token.
    _, first = pipeline.sample(400, seed=61)
    processor = processors(pipeline)
    pipeline.wait_delivered(first)
    assert pipeline.accepted_by_pixel() == per_pixel(first)
    wait_for(lambda: all_committed(pipeline), 30, "the first part committed")
    assert pipeline.health("/readyz") == 200

    # shop-a's token is revoked at TikTok (the sandbox): 40105 for every shop-a request.
    sandbox.set_tokens([
        Token(TOKEN, label="default"),
        Token(TOKEN_A_ROTATED, label="shop-a", pixels=frozenset({PIXEL_A})),
        Token(TOKEN_B, label="shop-b", pixels=frozenset({PIXEL_B})),
    ])  # fmt: skip
    _, second = pipeline.sample(400, seed=62)
    wait_for(lambda: pipeline.health("/readyz") == 503, 30, "readiness to name the halt")
    reason = pipeline.health_reason("/readyz") or ""
    assert reason.startswith("halted: pixel shop-a: 40105 "), reason
    assert "shop-b" not in reason
    assert pipeline.sample_value('tiktok_events_sink_fatal{pixel="shop-a"}') == 1
    assert pipeline.sample_value('tiktok_events_sink_fatal{pixel="shop-b"}') == 0
    assert pipeline.sample_value('tiktok_events_sink_fatal{pixel="default"}') == 0

    # shop-b keeps being delivered and committed while shop-a is held, batch after batch.
    held_a = per_pixel(first)[PIXEL_A]
    expected_b = per_pixel(first + second)[PIXEL_B]
    wait_for(lambda: pipeline.accepted_by_pixel()[PIXEL_B] == expected_b, 60, "shop-b's events")
    wait_for(lambda: committed_all(pipeline, b_kinds), 30, "shop-b's topics committed")
    _, third = pipeline.sample(400, seed=63)
    expected_b = per_pixel(first + second + third)[PIXEL_B]
    assert per_pixel(third)[PIXEL_B] > 0
    wait_for(lambda: pipeline.accepted_by_pixel()[PIXEL_B] == expected_b, 60, "more of shop-b")
    wait_for(lambda: committed_all(pipeline, b_kinds), 30, "shop-b's topics committed again")
    time.sleep(1.0)  # commits every 200 ms: a commit past a held event would have happened
    assert pipeline.accepted_by_pixel()[PIXEL_A] == held_a  # held: not one more accepted
    assert not committed_all(pipeline, ("page_view",))  # nothing past shop-a's held events
    assert pipeline.health_reason("/readyz") == reason  # still halted, still named
    assert pipeline.sample_value("tiktok_events_paused") == 0  # shop-b's topics are read
    assert dead_letters(pipeline) == []  # a token error never dead-letters

    # shop-a's token file is fixed: its held events are delivered, and nothing is lost.
    token_a.write_text(TOKEN_A_ROTATED + "\n")
    everything = first + second + third
    pipeline.wait_delivered(everything, timeout=90)
    assert pipeline.accepted_by_pixel() == per_pixel(everything)
    wait_for(lambda: all_committed(pipeline), 30, "everything committed")
    wait_for(lambda: pipeline.health("/readyz") == 200, 30, "readiness to come back")
    assert pipeline.sample_value('tiktok_events_sink_fatal{pixel="shop-a"}') == 0
    assert dead_letters(pipeline) == []
    log = processor.log_path.read_text(errors="replace")
    assert "delivery halted for pixel shop-a: 40105" in log
    assert "delivery resumed for pixel shop-a" in log
    for token in (TOKEN, TOKEN_A, TOKEN_A_ROTATED, TOKEN_B):
        assert token not in log
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
