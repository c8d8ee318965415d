"""The sender's limits hold however a batch travels: max_in_flight bounds first
attempts, retries and bisection alike (and the in-flight gauge with them), a batch
waiting to retry holds no slot, and max_requests_per_s spaces every request, first
attempts, retries and bisection, on a virtual clock.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import httpx

from processor.metrics import Metrics
from tests.unit.sinkkit import (
    VirtualTime,
    a_batch,
    accepted_refs,
    envelope,
    outcomes,
    rejected_refs,
    running,
    sent_events,
    sent_refs,
    wait_for,
)


def test_max_in_flight_is_never_exceeded() -> None:
    active = 0
    peak = 0
    metrics = Metrics()
    gauge_peak = [0.0]

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        gauge_peak[0] = max(gauge_peak[0], metrics.value("in_flight_requests"))
        await asyncio.sleep(0.01)
        active -= 1
        return envelope(0)

    with running(handler, metrics=metrics, max_in_flight=3) as sender:
        for first in range(0, 200, 10):
            sender.submit(a_batch(range(first, first + 10)))
        done = outcomes(sender, 20)
    assert accepted_refs(done) == list(range(200))
    assert 1 < peak <= 3
    assert gauge_peak[0] <= 3
    assert metrics.value("in_flight_requests") == 0


def test_max_in_flight_also_bounds_bisection_and_retries() -> None:
    active = 0
    peak = 0
    dice = random.Random(3)

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.002)
        active -= 1
        if dice.random() < 0.2:
            return httpx.Response(503)
        bad = [i for i, e in enumerate(sent_events(request)) if e.get("bad")]
        return envelope(40002, "Invalid value") if bad else envelope(0)

    with running(handler, max_in_flight=2, max_retries=50) as sender:
        sender.submit(a_batch(range(64), bad=frozenset({3, 17, 40, 41})))
        sender.submit(a_batch(range(64, 80)))
        done = outcomes(sender, 2)
    assert rejected_refs(done) == [3, 17, 40, 41]
    assert peak <= 2


def test_a_batch_waiting_to_retry_holds_no_slot_and_close_cancels_it_unreported() -> None:
    forever: list[asyncio.Future[None]] = []

    async def sleep(delay: float) -> None:
        if delay >= 5:  # the retry wait of the first batch: block until cancelled
            future = asyncio.get_running_loop().create_future()
            forever.append(future)
            await future
        await asyncio.sleep(0)

    def handler(request: httpx.Request) -> httpx.Response:
        if 0 in sent_refs(request):
            return httpx.Response(503, headers={"Retry-After": "10"})
        return envelope(0)

    with running(
        handler, sleep=sleep, max_in_flight=1, rate_burst=1000, close_timeout=0.1
    ) as sender:
        sender.submit(a_batch([0, 1]))
        wait_for(lambda: bool(forever))
        sender.submit(a_batch([2, 3]))
        [done] = outcomes(sender, 1)  # completes while the first batch waits to retry
        assert accepted_refs([done]) == [2, 3]
    assert sender.poll_completions() == []  # the waiting batch was cancelled, not reported
    assert sender.in_flight_batches == 1


def test_the_rate_limit_holds_for_first_attempts_retries_and_bisection() -> None:
    virtual = VirtualTime()
    starts: list[float] = []
    calls = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        starts.append(virtual.now)
        if next(calls) % 3 == 1:
            return httpx.Response(503)
        bad = [i for i, e in enumerate(sent_events(request)) if e.get("bad")]
        return envelope(40002, "Invalid value") if bad else envelope(0)

    rate = 5
    with running(
        handler,
        clock=virtual.clock,
        sleep=virtual.sleep,
        max_requests_per_s=float(rate),
        max_in_flight=8,
        max_retries=20,
        backoff_initial_ms=100,
        backoff_max_ms=2000,
    ) as sender:
        for first in range(0, 60, 4):
            sender.submit(a_batch(range(first, first + 4), bad=frozenset({5, 22})))
        done = outcomes(sender, 15)
    assert rejected_refs(done) == [5, 22]
    assert len(starts) > 20
    starts.sort()
    # No more than `rate` requests in any one-second window (burst 1: evenly spaced).
    for earlier, later in itertools.pairwise(starts):
        assert later - earlier >= 1 / rate - 1e-6
    for i in range(len(starts) - rate):
        assert starts[i + rate] - starts[i] >= 1.0 - 1e-6
