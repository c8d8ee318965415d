"""The access token never leaves the sender: wherever an HTTP library or TikTok echoes
it (an exception, a bad-payload message, a retryable or a fatal answer), it is in no
log line, halt reason, rejection reason, outcome or metrics exposition, before or
after the token file is rotated.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from processor.metrics import Metrics
from tests.unit.sinkkit import (
    NEW_TOKEN,
    TOKEN,
    a_batch,
    accepted_refs,
    envelope,
    outcomes,
    reading_token_file,
    wait_for,
)


def test_the_token_never_reaches_logs_reasons_outcomes_or_metrics(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    metrics = Metrics()
    calls = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        n = next(calls)
        if n == 0:
            raise httpx.LocalProtocolError(f"Illegal header value {TOKEN!r}")
        if n == 1:
            return envelope(40002, f"Invalid value for access_token {TOKEN}")
        if n == 2:
            return envelope(50000, f"echo {TOKEN}")
        if n == 3:
            return envelope(40105, f"Token {TOKEN} was revoked")
        if request.headers["Access-Token"] == NEW_TOKEN:
            return envelope(0)
        return envelope(40105, f"Token {TOKEN} was revoked")

    with reading_token_file(handler, token_file, metrics=metrics, max_retries=1) as sender:
        sender.submit(a_batch([0]))  # network error, then 40002: rejected with the echo
        [first] = outcomes(sender, 1)
        sender.submit(a_batch([1]))  # 50000 echo, then 40105 echo: halted
        wait_for(lambda: sender.halted is not None)
        halted = sender.halted
        token_file.write_text(NEW_TOKEN)
        [second] = outcomes(sender, 1)

    assert halted is not None
    assert TOKEN not in halted
    assert "********" in halted
    texts = [repr(first), repr(second), halted, *(reason for _, reason in first.rejected)]
    assert first.rejected
    for text in texts:
        assert TOKEN not in text
        assert NEW_TOKEN not in text
    log_text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert TOKEN not in log_text
    assert NEW_TOKEN not in log_text
    exposition = generate_latest(metrics.registry).decode()
    assert TOKEN not in exposition
    assert NEW_TOKEN not in exposition
    assert accepted_refs([second]) == [1]
