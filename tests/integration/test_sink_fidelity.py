"""What the sink reports matches what happened, against the real sandbox over HTTP on
127.0.0.1 (no Kafka needed): a token rotated to another wrong one never reads as
"resumed", and a dead letter's reason names the event where the user put it (its index in
the submitted batch), not where bisection re-sent it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processor.metrics import Metrics
from processor.sandbox import Sandbox
from tests.integration.test_sink_sandbox import (
    NEW_TOKEN,
    TOKEN,
    a_batch,
    assert_all_accepted,
    ids_of,
    sending,
    stored_ids,
)
from tests.unit.sinkkit import outcomes, wait_for

# Neither the old token nor the new one: pasted by mistake, refused by the sandbox too.
OTHER_WRONG_TOKEN = "tok-sandbox-5a11ad-also-wrong-never-log-me"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(tokens=(TOKEN,)) as sb:
        yield sb


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_wrong_then_wrong_then_right_token_stays_halted_until_the_right_one(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "tiktok-token"
    token_file.write_text(TOKEN + "\n")
    metrics = Metrics()
    with sending(sandbox, token_file=token_file, metrics=metrics) as sender:
        first = a_batch(10)
        sender.submit(first)
        outcomes(sender, 1)

        sandbox.set_tokens([NEW_TOKEN])  # wrong #1: the token in the file is revoked
        held = [a_batch(10) for _ in range(3)]
        for batch in held:
            sender.submit(batch)
        wait_for(lambda: sender.halted is not None)
        assert sender.halted is not None
        assert sender.halted.startswith("40105")

        # Watched as /readyz and Prometheus would see it, from another thread.
        unhalted: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                if sender.halted is None or metrics.value("sink_fatal", {"pixel": "default"}) != 1:
                    unhalted.append(time.monotonic())
                time.sleep(0.0005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            token_file.write_text(OTHER_WRONG_TOKEN + "\n")  # wrong #2
            wait_for(lambda: bool(messages(caplog, "still halted")))
            time.sleep(0.5)  # ten token checks later: still halted, nothing re-tried
        finally:
            stop.set()
            watcher.join(5)
        assert unhalted == []
        assert sender.halted.startswith("40105")
        assert sender.in_flight_batches == 3
        assert sandbox.stats()["events"]["accepted"] == 10
        assert messages(caplog, "resumed") == []

        token_file.write_text(NEW_TOKEN + "\n")  # right
        done = outcomes(sender, 3)
        assert sender.halted is None
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 0

    assert_all_accepted(done, held)
    assert stored_ids(sandbox) == ids_of(first.items).union(*(ids_of(b.items) for b in held))
    assert sandbox.stats()["events"]["accepted"] == 40
    [still] = messages(caplog, "still halted")
    assert still.startswith("still halted: the new token was refused too: 40105 ")
    assert len(messages(caplog, "delivery halted")) == 1
    assert len(messages(caplog, "trying the new access token from file")) == 2
    assert messages(caplog, "resumed") == ["delivery resumed: TikTok accepted the new access token"]
    for text in (caplog.text, *(repr(o) for o in done)):
        for token in (TOKEN, NEW_TOKEN, OTHER_WRONG_TOKEN):
            assert token not in text


def test_dead_letter_reasons_name_the_events_index_in_the_submitted_batch(
    sandbox: Sandbox,
) -> None:
    def spoil(i: int, event: dict[str, Any]) -> None:
        if i == 417:
            event["event_id"] = 12345  # not a string: 40002
        if i == 900:
            event["user"]["email"] = "jane@example.com"  # not hashed: 40062

    batch = a_batch(1000, change=spoil)
    with sending(sandbox) as sender:
        sender.submit(batch)
        [done] = outcomes(sender, 1)
    rejected = {item.ref: reason for item, reason in done.rejected}
    assert set(rejected) == {417, 900}
    # The sandbox named each event as data[0] of the request that carried it alone.
    assert rejected[417].startswith("40002 Invalid value for data[417].event_id")
    assert rejected[417].endswith("(event 417 of a batch of 1000, isolated)")
    assert rejected[900].startswith("40062 PII not hashed: data[900].user.email")
    assert rejected[900].endswith("(event 900 of a batch of 1000, isolated)")
    assert "data[0]" not in rejected[417] + rejected[900]
    assert "jane@example.com" not in rejected[900]
    assert len(done.accepted) == 998
