"""Redact first, cut second: no part of the access token survives in a reason, an outcome,
a halt reason, the readiness board or a log line, wherever TikTok's message puts it."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.batching import Batch, PendingEvent
from processor.config import Secret
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.redact import ELLIPSIS, MIN_PREFIX, REDACTED, redact, shorten
from processor.service.board import WorkerBoard
from processor.sink import TikTokClient, Verdict, classify
from processor.sink.classify import MAX_MESSAGE_CHARS
from tests.unit.sinkkit import PIXEL, envelope, outcomes, pending, running, tiktok, wait_for

# 40 characters starting with "TKN", which the filler never holds, so any leak of its
# start is found by a substring search.
TOKEN = "TKN7f3c2a9e41b0d85c6e2f1a9b7c3d5e8f0a1b2"
# 700 characters without a colon: the sender logs a rejection's reason up to its first
# colon (80 characters at most), so a token early in the message reaches that line too.
FILLER = ("the server says no " * 40)[:700]
POSITIONS = range(601)  # the token starts at each of these, across the 500-character cut


def message_at(position: int) -> str:
    return FILLER[:position] + TOKEN + FILLER[position:]


def assert_no_token(text: str) -> None:
    # Every prefix of MIN_PREFIX (8) characters or more starts with the 8-character one.
    assert TOKEN[:MIN_PREFIX] not in text


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [caplog.text]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), repr(record.__dict__)]
    return texts


# -- redact and shorten ------------------------------------------------------------------


def test_every_occurrence_of_the_secret_is_redacted() -> None:
    text = f"{TOKEN} and again {TOKEN}{TOKEN}."
    assert redact(text, [TOKEN]) == f"{REDACTED} and again {REDACTED}{REDACTED}."


def test_a_run_that_starts_like_the_secret_is_redacted_as_far_as_it_matches() -> None:
    # A server that cut the token short itself, or quoted it with a suffix.
    assert redact(f"token {TOKEN[:12]}… refused", [TOKEN]) == f"token {REDACTED}… refused"
    assert redact(f"[{TOKEN}xyz]", [TOKEN]) == f"[{REDACTED}xyz]"
    assert redact(f"ends with {TOKEN[:MIN_PREFIX]}", [TOKEN]) == f"ends with {REDACTED}"
    # Shorter runs say nothing about the token and are ordinary text.
    assert redact(f"a {TOKEN[: MIN_PREFIX - 1]} b", [TOKEN]) == f"a {TOKEN[: MIN_PREFIX - 1]} b"


def test_text_without_the_secret_is_returned_as_it_is() -> None:
    text = "40002 Invalid value for data[3].event_id"
    assert redact(text, [TOKEN]) is text
    assert redact(text, []) is text


def test_secrets_too_short_to_redact_are_ignored() -> None:
    assert redact("a bc abc", ["abc"]) == "a bc abc"
    assert redact("x abcd y", ["abcd"]) == f"x {REDACTED} y"


def test_a_bare_string_is_refused_as_the_secrets() -> None:
    with pytest.raises(TypeError, match="collection"):
        redact(f"echo {TOKEN}", TOKEN)


def test_shorten_redacts_before_it_cuts() -> None:
    text = "x" * 490 + TOKEN
    assert shorten(text, 500) == "x" * 490 + TOKEN[:10] + ELLIPSIS
    assert shorten(text, 500, [TOKEN]) == "x" * 490 + REDACTED
    assert shorten("short", 500, [TOKEN]) == "short"
    with pytest.raises(ValueError, match="limit"):
        shorten("x", -1)


@given(
    before=st.text(max_size=80),
    after=st.text(max_size=80),
    kept=st.integers(0, len(TOKEN)),
    limit=st.integers(0, 250),
)
def test_no_cut_of_a_redacted_text_holds_the_start_of_the_secret(
    before: str, after: str, kept: int, limit: int
) -> None:
    # The whole token, or the part of it a server kept, anywhere in the text.
    text = before + TOKEN[: max(kept, MIN_PREFIX)] + after + TOKEN + before
    assert_no_token(shorten(text, limit, [TOKEN]))


# -- classify: the 500-character cut of TikTok's message ---------------------------------------


@pytest.mark.parametrize("code", [40002, 50000, 40105])
def test_the_cut_of_tiktoks_message_never_splits_the_token(code: int) -> None:
    for position in POSITIONS:
        body = orjson.dumps({"code": code, "message": message_at(position)})
        result = classify(200, body, None, secrets=(TOKEN,))
        assert_no_token(result.reason)
        assert len(result.reason) <= len(f"{code} ") + MAX_MESSAGE_CHARS + len(ELLIPSIS)
        if position + len(REDACTED) <= MAX_MESSAGE_CHARS:
            assert REDACTED in result.reason  # (past that, the cut takes the marker too)


def test_without_secrets_the_message_is_only_cut() -> None:
    body = orjson.dumps({"code": 40002, "message": "m" * 600})
    assert classify(200, body, None).reason == "40002 " + "m" * MAX_MESSAGE_CHARS + ELLIPSIS


# -- the client: every answer TikTok can give, through the real request path ---------------------


def one_event(position: int) -> list[PendingEvent]:
    return [pending(position)]


def position_of(request: httpx.Request) -> int:
    [event] = orjson.loads(request.content)["data"]
    return int(event["event_id"].removeprefix("e-"))


@pytest.mark.parametrize("code", [40002, 50000, 40105, 20001])
def test_the_client_never_returns_part_of_the_token(
    code: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def handler(request: httpx.Request) -> httpx.Response:
        return envelope(code, message_at(position_of(request)))

    async def send_all() -> list[str]:
        client = TikTokClient(
            tiktok(), Metrics(), timeout_s=5.0, transport=httpx.MockTransport(handler)
        )
        try:
            key = BatchKey("web", PIXEL, None)
            results = [await client.send(key, one_event(p), Secret(TOKEN)) for p in POSITIONS]
        finally:
            await client.aclose()
        return [r.reason for r in results]

    reasons = asyncio.run(send_all())
    assert len(reasons) == len(POSITIONS)
    for reason in reasons:
        assert_no_token(reason)
    for text in log_texts(caplog):
        assert_no_token(text)


# -- the sender: outcomes, give-up reasons, halts, the readiness board and logs -------------------


def test_rejections_and_give_ups_never_carry_part_of_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    rejected_code = 40002  # rejected for good: TikTok's reason goes to the dead letter
    retried_code = 50000  # retried once (a DEBUG line with the reason), then given up

    def handler(request: httpx.Request) -> httpx.Response:
        position = position_of(request)
        code = rejected_code if position % 2 == 0 else retried_code
        return envelope(code, message_at(position))

    with running(handler, config=tiktok(TOKEN), max_retries=1) as sender:
        for position in POSITIONS:
            sender.submit(Batch(BatchKey("web", PIXEL, None), one_event(position)))
        done = outcomes(sender, len(POSITIONS))

    reasons = [reason for outcome in done for _, reason in outcome.rejected]
    assert len(reasons) == len(POSITIONS)
    assert sum(r.startswith(f"{rejected_code} ") for r in reasons) == 301
    assert sum(r.startswith(f"gave up after 1 retries: {retried_code} ") for r in reasons) == 300
    for text in reasons + [repr(outcome) for outcome in done]:
        assert_no_token(text)
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert any("rejected for good" in r.getMessage() for r in caplog.records)
    for text in log_texts(caplog):
        assert_no_token(text)


# Straddling the readiness board's 256-byte cut ("halted: 40105 " comes first) and the
# 500-character cut of the message.
HALT_POSITIONS = [0, 210, 225, 236, 241, 242, 250, 460, 470, 480, 490, 499, 500, 520]


@pytest.mark.parametrize("position", HALT_POSITIONS)
def test_a_halt_reason_and_readyz_never_carry_part_of_the_token(
    position: int, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Access-Token"] == TOKEN:
            return envelope(40105, message_at(position))
        return envelope(0)

    board = WorkerBoard(multiprocessing.get_context("spawn"), 1)
    with running(
        handler,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=0.02,
    ) as sender:
        sender.submit(Batch(BatchKey("web", PIXEL, None), one_event(position)))
        wait_for(lambda: sender.halted is not None)
        halted = sender.halted
        assert halted is not None
        board.publish(0, 1.0, False, f"halted: {halted}")
        token_file.write_text("a-new-token-from-the-file")
        [done] = outcomes(sender, 1)

    assert done.accepted
    assert not done.rejected
    _, ready, published = board.read(0)
    assert not ready
    for text in (halted, published, *log_texts(caplog)):
        assert_no_token(text)
    if position + len(REDACTED) <= MAX_MESSAGE_CHARS:
        assert REDACTED in halted


def test_the_outcome_of_a_rejection_is_bad_payload_with_tiktoks_redacted_message() -> None:
    # The check above would pass if reasons were empty: the redacted message is there.
    body = orjson.dumps({"code": 40002, "message": message_at(100)})
    result = classify(200, body, None, secrets=(TOKEN,))
    assert result.verdict is Verdict.BAD_PAYLOAD
    assert result.reason.startswith("40002 " + FILLER[:100] + REDACTED + FILLER[100:120])
    assert result.reason.endswith(ELLIPSIS)
