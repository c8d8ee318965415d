"""Pacing (``processor.sink.pacing``): backoff is full jitter below a capped exponential,
with Retry-After as its floor, and the rate limiter's token bucket spaces requests
evenly after its burst on a fake clock and refuses a nonsense rate or burst.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.sink import RateLimiter, backoff_delay


@given(
    retry=st.integers(0, 200),
    retry_after=st.none() | st.floats(0, 1000),
    seed=st.integers(0, 2**32),
)
def test_backoff_is_full_jitter_with_retry_after_as_floor_and_a_cap(
    retry: int, retry_after: float | None, seed: int
) -> None:
    delay = backoff_delay(
        retry, initial_s=0.2, max_s=30.0, retry_after=retry_after, rng=random.Random(seed)
    )
    assert 0 <= delay <= 30.0
    assert delay <= max(min(30.0, 0.2 * 2.0**retry), retry_after or 0)
    if retry_after is not None:
        assert delay >= min(retry_after, 30.0)


def test_backoff_jitter_covers_the_whole_range() -> None:
    rng = random.Random(5)
    delays = [
        backoff_delay(3, initial_s=1.0, max_s=100.0, retry_after=None, rng=rng) for _ in range(500)
    ]
    assert min(delays) < 1.0
    assert max(delays) > 7.0
    assert max(delays) <= 8.0


def test_the_rate_limiter_spaces_requests_on_a_fake_clock() -> None:
    now = [100.0]

    async def sleep(delay: float) -> None:
        now[0] += delay

    limiter = RateLimiter(5.0, burst=2, clock=lambda: now[0], sleep=sleep)

    async def grants() -> list[float]:
        times = []
        for _ in range(12):
            await limiter.acquire()
            times.append(now[0])
        return times

    times = asyncio.run(grants())
    assert times[:2] == [100.0, 100.0]  # the burst
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert all(gap == pytest.approx(0.2) for gap in gaps)


def test_the_rate_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0, clock=time.monotonic, sleep=asyncio.sleep)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1, burst=0, clock=time.monotonic, sleep=asyncio.sleep)
