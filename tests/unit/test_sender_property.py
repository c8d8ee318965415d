"""The sender's contract as a property (hypothesis): against a seeded flaky TikTok
(timeouts, disconnects, 5xx, rate limits, bodies that are not the envelope, spurious
40002s, partial successes) and for any batch sizes, share of bad events, max_retries
and max_in_flight, every submitted event is reported exactly once, accepted or
rejected, no bad event is reported accepted, and nothing is reported accepted that
TikTok did not take.
"""

from __future__ import annotations

import itertools
import random
import threading

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.batching import Batch
from tests.unit.sinkkit import (
    a_batch,
    accepted_refs,
    envelope,
    outcomes,
    running,
    sent_events,
    sent_refs,
)


class FlakyTikTok:
    """Random answers from a seeded random source: successes, partials, retryable failures
    of every kind, spurious 40002s; and 40002 for any request carrying a bad event."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = sent_events(request)
        with self.lock:
            roll = self.rng.random()
            index = self.rng.randrange(len(events))
        if roll < 0.08:
            raise httpx.ReadTimeout("slow")
        if roll < 0.14:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if roll < 0.22:
            return httpx.Response(503)
        if roll < 0.28:
            return envelope(40100, "Too many requests")
        if roll < 0.31:
            return httpx.Response(200, content=b"<html>proxy</html>")
        if roll < 0.34:
            return envelope(40002, f"Invalid value for data[{index}].event")  # spurious
        bad = [i for i, e in enumerate(events) if e.get("bad")]
        if bad:
            named = bad[0] if roll < 0.8 else index
            return envelope(40002, f"Invalid value for data[{named}].event_id")
        with self.lock:
            self.accepted.extend(sent_refs(request))
        return envelope(20001 if roll > 0.95 else 0)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    bad_ratio=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    seed=st.integers(0, 2**32),
    max_retries=st.integers(0, 4),
    max_in_flight=st.integers(1, 6),
)
def test_every_submitted_event_is_reported_exactly_once(
    sizes: list[int], bad_ratio: float, seed: int, max_retries: int, max_in_flight: int
) -> None:
    rng = random.Random(seed)
    batches: list[Batch] = []
    bad: set[int] = set()
    refs = itertools.count()
    for size in sizes:
        ids = [next(refs) for _ in range(size)]
        bad_here = {i for i in ids if rng.random() < bad_ratio}
        bad |= bad_here
        batches.append(a_batch(ids, bad=frozenset(bad_here)))
    fake = FlakyTikTok(seed)
    with running(fake, max_retries=max_retries, max_in_flight=max_in_flight) as sender:
        for batch in batches:
            sender.submit(batch)
        done = outcomes(sender, len(batches))
        assert sender.in_flight_batches == 0
    assert sorted(id(o.batch) for o in done) == sorted(id(b) for b in batches)
    for outcome in done:
        reported = [p.ref for p in outcome.accepted] + [p.ref for p, _ in outcome.rejected]
        assert sorted(reported) == sorted(p.ref for p in outcome.batch.items)
    accepted = accepted_refs(done)
    assert not set(accepted) & bad  # TikTok never took a bad event, so neither did we
    assert set(accepted) <= set(fake.accepted)
    for outcome in done:
        for item, reason in outcome.rejected:
            assert reason.startswith(("gave up after", "40002 Invalid value"))
            if item.ref not in bad:  # a good event is only lost to a spurious 40002 or retries
                assert reason.startswith(("gave up after", "40002 Invalid value for data["))
