"""Ending a halt: a new token is only tried, and delivery resumes once TikTok accepts it.

A token file rewritten with another wrong token must not report "resumed" and halt again
a moment later; the requests the halt held are what tries the new token. Also: the
``data[i]`` of a dead letter's reason names the event's index in the submitted batch,
not in the smaller request bisection sent it in. Against httpx.MockTransport, no network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from processor.batching import Batch
from processor.config import Config, load_config
from processor.kafka.memory import MemorySource
from processor.loop import Processor
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sink import Sender
from processor.sink.classify import renumber_events
from processor.transform import build_transformer
from tests.conftest import EXAMPLE_CONFIG
from tests.unit.sinkkit import (
    NEW_TOKEN,
    PIXEL,
    TOKEN,
    FakeTikTok,
    TokenGate,
    a_batch,
    accepted_refs,
    delivery,
    envelope,
    outcomes,
    pending,
    rejected_refs,
    running,
    sent_events,
    tiktok,
    wait_for,
)
from tests.unit.test_loop import NOW, TP0, TP1, page_views, publish

# A third token, as wrong as the first: what someone pastes by mistake.
OTHER_WRONG_TOKEN = "tok-0dd0beef-also-wrong-never-log-me"
TRYING = "trying the new access token from file "
STILL_HALTED = "still halted: the new token was refused too: 40105"
ACCEPTED = "delivery resumed: TikTok accepted the new access token"


class HaltedSamples:
    """Reads ``sender.halted`` and the ``sink_fatal`` gauge in a tight loop on its own
    thread, as /readyz and a Prometheus scrape would, so a moment of "not halted" between
    two refusals cannot slip by unseen."""

    def __init__(self, sender: Sender, metrics: Metrics) -> None:
        self._sender = sender
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0
        self.unhalted = 0
        self.gauge_zero = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.count += 1
            if self._sender.halted is None:
                self.unhalted += 1
            if self._metrics.value("sink_fatal", {"pixel": "default"}) == 0:
                self.gauge_zero += 1
            time.sleep(0.0005)

    @contextmanager
    def sampling(self) -> Iterator[HaltedSamples]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def resumed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]


def halted_by(sender: Sender, token_file: Path, gate: TokenGate, *batches: Batch) -> None:
    """Submit ``batches`` and wait until the token in ``token_file`` is refused."""
    for batch in batches:
        sender.submit(batch)
    wait_for(lambda: sender.halted is not None)
    assert sender.halted == "40105 Access token is incorrect or has been revoked"
    assert TOKEN in gate.tokens


# -- a new token is tried, not trusted --------------------------------------------------------


def test_a_rotation_to_another_wrong_token_never_reports_delivery_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    gate = TokenGate(NEW_TOKEN)
    metrics = Metrics()
    with running(
        gate,
        config=tiktok(None, file=token_file),
        metrics=metrics,
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
    ) as sender:
        halted_by(sender, token_file, gate, a_batch(range(5)), a_batch(range(5, 8)))
        with HaltedSamples(sender, metrics).sampling() as samples:
            token_file.write_text(OTHER_WRONG_TOKEN + "\n")
            wait_for(lambda: bool(lines(caplog, STILL_HALTED)))
            time.sleep(0.3)  # many token checks later: the same wrong token is not retried
        assert samples.count > 100
        assert samples.unhalted == 0
        assert samples.gauge_zero == 0
        assert sender.halted == "40105 Access token is incorrect or has been revoked"
        assert sender.in_flight_batches == 2
        assert not sender.poll_completions()

    # One request tried the wrong token, not one per held batch, and only once.
    assert gate.tokens.count(OTHER_WRONG_TOKEN) == 1
    [trying] = lines(caplog, TRYING)
    assert trying.levelno == logging.WARNING
    assert trying.getMessage() == f"{TRYING}{token_file}"
    [still] = lines(caplog, STILL_HALTED)
    assert still.levelno == logging.ERROR
    assert still.getMessage() == (
        "still halted: the new token was refused too: "
        "40105 Access token is incorrect or has been revoked"
    )
    assert resumed_lines(caplog) == []
    assert len(lines(caplog, "delivery halted")) == 1
    assert metrics.value("sink_fatal", {"pixel": "default"}) == 1


def test_a_rotation_to_a_good_token_resumes_only_once_tiktok_accepts_a_held_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    answer = threading.Event()
    good_requests: list[list[int]] = []

    async def tiktok_api(request: httpx.Request) -> httpx.Response:
        if request.headers["Access-Token"] != NEW_TOKEN:
            return envelope(40105, "Access token is incorrect or has been revoked")
        good_requests.append([int(e["event_id"][2:]) for e in sent_events(request)])
        while not answer.is_set():  # TikTok takes its time over the first good request
            await asyncio.sleep(0.005)
        return envelope(0)

    metrics = Metrics()
    with running(
        tiktok_api,
        config=tiktok(None, file=token_file),
        metrics=metrics,
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
    ) as sender:
        sender.submit(a_batch(range(10)))
        wait_for(lambda: sender.halted is not None)
        token_file.write_text(NEW_TOKEN)
        wait_for(lambda: bool(good_requests))
        # The new token is loaded and on its way, but not proven: still halted.
        time.sleep(0.05)
        assert sender.halted == "40105 Access token is incorrect or has been revoked"
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 1
        assert lines(caplog, TRYING)
        assert resumed_lines(caplog) == []
        answer.set()
        [done] = outcomes(sender, 1)
        assert sender.halted is None
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 0
    assert accepted_refs([done]) == list(range(10))
    assert good_requests == [list(range(10))]  # the held request itself proved the token
    assert resumed_lines(caplog) == [ACCEPTED]
    [trying] = lines(caplog, TRYING)
    [resumed] = lines(caplog, ACCEPTED)
    assert caplog.records.index(trying) < caplog.records.index(resumed)
    assert resumed.levelno == logging.WARNING


def test_wrong_then_wrong_then_right_delivers_every_held_batch_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    gate = TokenGate(NEW_TOKEN)
    metrics = Metrics()
    with running(
        gate,
        config=tiktok(None, file=token_file),
        metrics=metrics,
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
        max_in_flight=2,
    ) as sender:
        batches = [a_batch(range(i * 4, i * 4 + 4)) for i in range(4)]
        halted_by(sender, token_file, gate, *batches)
        with HaltedSamples(sender, metrics).sampling() as samples:
            token_file.write_text(OTHER_WRONG_TOKEN)
            wait_for(lambda: bool(lines(caplog, STILL_HALTED)))
            unhalted_while_wrong = samples.unhalted
            token_file.write_text(NEW_TOKEN)
            done = outcomes(sender, 4)
        assert sender.halted is None
    assert unhalted_while_wrong == 0
    assert accepted_refs(done) == list(range(16))
    assert rejected_refs(done) == []
    assert gate.tokens.count(OTHER_WRONG_TOKEN) == 1
    assert gate.tokens.count(NEW_TOKEN) == 4  # each held batch sent once with the good token
    assert resumed_lines(caplog) == [ACCEPTED]
    assert len(lines(caplog, TRYING)) == 2
    assert metrics.value("sink_fatal", {"pixel": "default"}) == 0


def test_an_answer_that_says_nothing_about_the_token_does_not_end_the_halt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    outage = threading.Event()
    outage.set()
    answers: list[str] = []

    def tiktok_api(request: httpx.Request) -> httpx.Response:
        if request.headers["Access-Token"] != NEW_TOKEN:
            return envelope(40105, "Access token is incorrect or has been revoked")
        if outage.is_set():  # a gateway in front of TikTok, before any token check
            answers.append("503")
            return httpx.Response(503)
        answers.append("0")
        return envelope(0)

    metrics = Metrics()
    with running(
        tiktok_api,
        config=tiktok(None, file=token_file),
        metrics=metrics,
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
        max_retries=None,
        backoff_max_ms=20,
    ) as sender:
        sender.submit(a_batch(range(3)))
        wait_for(lambda: sender.halted is not None)
        token_file.write_text(NEW_TOKEN)
        wait_for(lambda: answers.count("503") >= 3)
        assert sender.halted is not None
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 1
        outage.clear()
        [done] = outcomes(sender, 1)
        assert sender.halted is None
    assert accepted_refs([done]) == [0, 1, 2]
    assert resumed_lines(caplog) == [ACCEPTED]


def test_a_new_token_that_tiktok_answers_with_a_bad_payload_code_is_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # TikTok looks at the token before the events: refusing an event for its content
    # shows that it took the token.
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    fake = FakeTikTok()

    def tiktok_api(request: httpx.Request) -> httpx.Response:
        if request.headers["Access-Token"] != NEW_TOKEN:
            return envelope(40105, "Access token is incorrect or has been revoked")
        return fake(request)

    with running(
        tiktok_api,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
    ) as sender:
        sender.submit(a_batch([7], bad=frozenset({7})))
        wait_for(lambda: sender.halted is not None)
        token_file.write_text(NEW_TOKEN)
        [done] = outcomes(sender, 1)
        assert sender.halted is None
    assert rejected_refs([done]) == [7]
    assert resumed_lines(caplog) == [ACCEPTED]


def test_when_every_request_trying_the_new_token_gives_up_the_halt_ends_anyway(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing is left to prove the token, and the poll loop hands no batches over while
    # halted: waiting for a proof would wait forever.
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)

    def tiktok_api(request: httpx.Request) -> httpx.Response:
        if request.headers["Access-Token"] != NEW_TOKEN:
            return envelope(40105, "Access token is incorrect or has been revoked")
        return httpx.Response(503)

    with running(
        tiktok_api,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
        max_retries=2,
    ) as sender:
        sender.submit(a_batch(range(3)))
        wait_for(lambda: sender.halted is not None)
        token_file.write_text(NEW_TOKEN)
        [done] = outcomes(sender, 1)
        assert sender.halted is None
    assert [reason for _, reason in done.rejected] == ["gave up after 2 retries: HTTP 503"] * 3
    assert resumed_lines(caplog) == [
        "delivery resumed: no request is left to try the new access token on"
    ]


def test_a_first_token_that_appears_with_nothing_held_resumes_on_load(tmp_path: Path) -> None:
    # No token at start and no batch yet: there is no request to try the token on, so it
    # is used as loaded (a refusal would halt again like any other).
    token_file = tmp_path / "token"  # not there yet
    gate = TokenGate(TOKEN)
    with running(
        gate,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=0.01,
    ) as sender:
        assert sender.halted is not None
        assert "no usable access token" in sender.halted
        token_file.write_text(TOKEN)
        wait_for(lambda: sender.halted is None)
        assert gate.tokens == []
        sender.submit(a_batch(range(2)))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == [0, 1]
    assert gate.tokens == [TOKEN]


# -- the poll loop through a halt, a wrong token and the right one ----------------------------------


def pipeline(sender: Sender) -> tuple[Processor, MemorySource]:
    config: Config = load_config(EXAMPLE_CONFIG, environ={})
    config = replace(
        config,
        delivery=replace(config.delivery, max_batch_events=2, linger_ms=0, commit_interval_ms=10),
    )
    transformer, _ = build_transformer(config, lambda: NOW)
    source = MemorySource([TP0, TP1])
    processor = Processor(config, transformer, Metrics(), sender, source)
    processor.start()
    return processor, source


def committed(source: MemorySource) -> int | None:
    return source.committed.get(TP0)


def test_the_poll_loop_stays_paused_through_a_wrong_token_and_resumes_on_the_right_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    gate = TokenGate(NEW_TOKEN)
    metrics = Metrics()
    sender = Sender(
        tiktok(None, file=token_file),
        delivery(),
        metrics,
        transport=httpx.MockTransport(gate),
        token_check_interval_s=0.01,
    )
    processor, source = pipeline(sender)

    def turn() -> None:
        assert processor.turn()
        time.sleep(0.002)

    def turn_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            turn()
            assert time.monotonic() < deadline, "condition not met in time"

    publish(source, 0, page_views(0, 4))
    turn_until(lambda: sender.halted is not None)
    turn_until(lambda: source.paused)
    submitted = sender.in_flight_batches
    assert submitted >= 1

    token_file.write_text(OTHER_WRONG_TOKEN)
    paused_throughout = True
    deadline = time.monotonic() + 60
    while not lines(caplog, STILL_HALTED) and time.monotonic() < deadline:
        turn()
        paused_throughout &= source.paused and sender.halted is not None
    for _ in range(50):  # the loop keeps turning while halted: still paused, still held
        turn()
        paused_throughout &= source.paused and sender.halted is not None
    assert lines(caplog, STILL_HALTED)
    assert paused_throughout
    assert committed(source) in (None, 0)

    token_file.write_text(NEW_TOKEN)
    turn_until(lambda: committed(source) == 4)
    turn_until(lambda: not source.paused)
    assert processor.shutdown() == 0
    assert processor.report.events_accepted == 4
    app_lines = [r for r in caplog.records if r.name == "processor.loop"]
    assert len([r for r in app_lines if "delivery halted" in r.getMessage()]) == 1
    assert resumed_lines(caplog) == [ACCEPTED]


# -- dead-letter reasons name the event's index in the submitted batch -------------------------


@pytest.mark.parametrize("naming", ["index", "none", "wrong"])
def test_an_isolated_events_reason_names_its_index_in_the_original_batch(naming: str) -> None:
    # TikTok (here FakeTikTok) names the bad event by its index in the request it was
    # sent: after bisection that is data[0] of a request of one.
    fake = FakeTikTok(naming)
    with running(fake, max_in_flight=8) as sender:
        sender.submit(a_batch(range(1000), bad=frozenset({417})))
        [done] = outcomes(sender, 1)
    [(item, reason)] = done.rejected
    assert item.ref == 417
    assert [417] in fake.requests  # it was sent alone
    if naming == "none":
        assert reason == (
            "40002 Invalid value for event_id: not a valid string "
            "(event 417 of a batch of 1000, isolated)"
        )
    else:
        assert reason == (
            f"40002 Invalid value for data[417].{'x' if naming == 'wrong' else 'event_id'}: "
            "not a valid string (event 417 of a batch of 1000, isolated)"
        )


def test_each_bad_event_of_a_bisected_batch_is_named_by_its_own_index() -> None:
    bad = frozenset({0, 13, 57, 99})
    with running(FakeTikTok(), max_in_flight=8) as sender:
        sender.submit(a_batch(range(100), bad=bad))
        [done] = outcomes(sender, 1)
    reasons = {int(item.ref): reason for item, reason in done.rejected}
    assert set(reasons) == bad
    for index, reason in reasons.items():
        assert reason == (
            f"40002 Invalid value for data[{index}].event_id: not a valid string "
            f"(event {index} of a batch of 100, isolated)"
        )


def test_the_index_is_in_the_batch_even_when_refs_are_not_positions() -> None:
    # Refs are the caller's (record references), positions are the batch's.
    items = [pending(ref, bad=ref == 5003) for ref in range(5000, 5010)]
    with running(FakeTikTok()) as sender:
        sender.submit(Batch(BatchKey("web", PIXEL, None), items))
        [done] = outcomes(sender, 1)
    [(_, reason)] = done.rejected
    assert "data[3].event_id" in reason
    assert reason.endswith("(event 3 of a batch of 10, isolated)")


def test_a_batch_of_one_keeps_tiktoks_reason_as_it_is() -> None:
    with running(FakeTikTok()) as sender:
        sender.submit(a_batch([0], bad=frozenset({0})))
        [done] = outcomes(sender, 1)
    assert [reason for _, reason in done.rejected] == [
        "40002 Invalid value for data[0].event_id: not a valid string"
    ]


def test_an_isolated_event_that_gives_up_on_retries_is_named_too() -> None:
    def tiktok_api(request: httpx.Request) -> httpx.Response:
        events = sent_events(request)
        if any(e.get("bad") for e in events):
            if len(events) > 1:
                return envelope(40002, "Invalid value for data[1].event_id")
            return httpx.Response(503)  # alone, it meets an outage
        return envelope(0)

    with running(tiktok_api, max_retries=1) as sender:
        sender.submit(a_batch(range(4), bad=frozenset({1})))
        [done] = outcomes(sender, 1)
    assert [reason for _, reason in done.rejected] == [
        "gave up after 1 retries: HTTP 503 (event 1 of a batch of 4, isolated)"
    ]
    assert accepted_refs([done]) == [0, 2, 3]


def test_renumber_events_maps_each_index_of_a_request_to_its_place_in_the_batch() -> None:
    places = [417, 9, 12]
    assert renumber_events("data[0].event_id and data[2].user, data[1]", places) == (
        "data[417].event_id and data[12].user, data[9]"
    )
    assert renumber_events("data[3].x is not in the request", places) == (
        "data[3].x is not in the request"
    )
    assert renumber_events("metadata[0] is not data", places) == "metadata[0] is not data"
    assert renumber_events("no index at all", places) == "no index at all"
