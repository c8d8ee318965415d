"""Bad payloads (TikTok's 40002 and the like, HTTP 413): the sender bisects a refused
batch until each bad event stands alone, so every good event is delivered and exactly
the bad ones are rejected, whether TikTok names the bad event by its index, does not
name it or names the wrong one; and an event that cannot be encoded as JSON is
rejected without a request. Against httpx.MockTransport (``FakeTikTok``).
"""

from __future__ import annotations

import httpx
import pytest

from processor.metrics import Metrics
from tests.unit.sinkkit import (
    FakeTikTok,
    a_batch,
    accepted_refs,
    envelope,
    outcomes,
    rejected_refs,
    running,
    sent_events,
)


@pytest.mark.parametrize(
    ("naming", "max_requests"),
    [
        ("index", 7),  # 1 + 2 per bad event: the named event alone, and the rest
        ("none", 45),  # halving: about 2·log2(100) per bad event
        ("wrong", 45),  # a misleading index is noticed and halving takes over
    ],
)
def test_bisection_delivers_the_good_events_and_rejects_exactly_the_bad(
    naming: str, max_requests: int
) -> None:
    bad = frozenset({13, 57, 90})
    fake = FakeTikTok(naming)
    metrics = Metrics()
    with running(fake, metrics=metrics, max_in_flight=8) as sender:
        sender.submit(a_batch(range(100), bad=bad))
        [done] = outcomes(sender, 1)
    assert rejected_refs([done]) == sorted(bad)
    assert accepted_refs([done]) == sorted(set(range(100)) - bad)
    for item, reason in done.rejected:
        assert reason.startswith("40002 Invalid value for ")
        assert item.payload["bad"] is True
    assert len(fake.requests) <= max_requests, fake.requests
    accepted_twice = [r for r in range(100) if sum(r in req for req in fake.requests) > 50]
    assert accepted_twice == []
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "accepted"}) == 97
    assert metrics.value("events_sent_total", {"event": "ViewContent", "outcome": "rejected"}) == 3


def test_a_batch_that_is_all_bad_is_rejected_event_by_event() -> None:
    fake = FakeTikTok("none")
    with running(fake) as sender:
        sender.submit(a_batch(range(8), bad=frozenset(range(8))))
        [done] = outcomes(sender, 1)
    assert rejected_refs([done]) == list(range(8))
    assert len(fake.requests) == 15  # a full binary tree over 8 leaves


def test_http_413_is_bisected_until_the_requests_fit() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(413) if len(sent_events(request)) > 25 else envelope(0)

    with running(handler) as sender:
        sender.submit(a_batch(range(100)))
        [done] = outcomes(sender, 1)
    assert accepted_refs([done]) == list(range(100))
