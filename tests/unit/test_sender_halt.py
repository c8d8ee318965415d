"""Fatal answers (a refused token, no permission): the sender halts, holds every batch
unsent and unreported, and resumes once a usable token appears in the token file; a
refused token from the environment stays halted and close reports nothing; without
a token it starts halted; a token that cannot be a header value is never sent. What
ending a halt takes (a new token is tried, not trusted) is in test_sender_resume.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from processor.metrics import Metrics
from processor.sink import Sender
from tests.unit.sinkkit import (
    NEW_TOKEN,
    TOKEN,
    TokenGate,
    a_batch,
    accepted_refs,
    delivery,
    envelope,
    outcomes,
    reading_token_file,
    rejected_refs,
    tiktok,
    wait_for,
)


def test_a_refused_token_halts_everything_until_the_token_file_is_rotated(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    gate = TokenGate(NEW_TOKEN)
    metrics = Metrics()
    with reading_token_file(gate, token_file, metrics=metrics) as sender:
        assert sender.halted is None
        sender.submit(a_batch(range(5)))
        wait_for(lambda: sender.halted is not None)
        assert sender.halted == "40105 Access token is incorrect or has been revoked"
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 1
        sender.submit(a_batch(range(5, 10)))  # held too, not even sent
        assert not sender.wait(0.3)  # nothing completes, nothing is rejected, while halted
        assert sender.in_flight_batches == 2
        assert gate.tokens == [TOKEN]
        assert metrics.value("retries_total", {"reason": "network"}) == 0

        token_file.write_text(NEW_TOKEN + "\n")
        done = outcomes(sender, 2)
        assert sender.halted is None
        assert metrics.value("sink_fatal", {"pixel": "default"}) == 0
    assert accepted_refs(done) == list(range(10))
    assert rejected_refs(done) == []
    assert gate.tokens[0] == TOKEN
    assert set(gate.tokens[1:]) == {NEW_TOKEN}
    assert metrics.value("requests_total", {"outcome": "fatal", "code": "40105"}) == 1


@pytest.mark.parametrize(
    "answer",
    [
        envelope(40001, "No permission to operate pixel code"),
        envelope(40102, "Access token has expired"),
        envelope(40104, "Access token is empty"),
        httpx.Response(401),
        httpx.Response(403),
        httpx.Response(404),
    ],
    ids=["40001", "40102", "40104", "http401", "http403", "http404"],
)
def test_an_environment_token_that_is_refused_stays_halted_and_close_reports_nothing(
    answer: httpx.Response,
) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer

    sender = Sender(
        tiktok(),
        delivery(),
        Metrics(),
        transport=httpx.MockTransport(handler),
        token_check_interval_s=0.01,
    )
    sender.start()
    sender.submit(a_batch(range(3)))
    wait_for(lambda: sender.halted is not None)
    assert not sender.wait(0.2)
    assert len(requests) == 1  # then nothing: re-reading the env gives the same token
    sender.close(0.1)
    assert sender.poll_completions() == []
    assert sender.in_flight_batches == 1
    assert sender.halted is not None


def test_without_a_token_the_sender_starts_halted_and_resumes_when_one_appears(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"  # not there yet
    gate = TokenGate(TOKEN)
    with reading_token_file(gate, token_file) as sender:
        assert sender.halted is not None
        assert "no usable access token" in sender.halted
        assert str(token_file) in sender.halted
        sender.submit(a_batch(range(3)))
        assert not sender.wait(0.2)
        assert gate.tokens == []
        token_file.write_text(TOKEN)
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == [0, 1, 2]


def test_a_token_that_cannot_be_a_header_value_is_never_sent(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("two words")
    gate = TokenGate(TOKEN)
    with reading_token_file(gate, token_file) as sender:
        sender.submit(a_batch(range(2)))
        assert sender.halted is not None
        assert not sender.wait(0.1)
        token_file.write_text(TOKEN)
        outcomes(sender, 1)
    assert gate.tokens == [TOKEN]
