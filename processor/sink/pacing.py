"""How fast the sink may send: the shared requests-per-second limit and retry backoff.

Owns :class:`RateLimiter` (one per sender, shared by first attempts, retries and
bisection requests alike, so a backlog replay or a retry storm cannot trip TikTok's
own limit, code 40100) and :func:`backoff_delay` (exponential with full jitter).
Both take their clock, sleep and random source from the caller, so tests run them on
fake time.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """A token bucket of ``burst`` requests refilled at ``rate`` per second, run as a
    schedule (the generic cell rate algorithm): each caller reserves the next free
    start time and sleeps until it, so waiters start in arrival order and nobody polls.

    Call from one event loop only. A caller cancelled while waiting leaves its slot
    unused, which only ever makes the rate lower.
    """

    def __init__(self, rate: float, *, burst: int = 1, clock: Clock, sleep: Sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be above 0 requests per second, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self._interval = 1.0 / rate
        self._slack = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None  # the theoretical arrival time of the next request

    async def acquire(self) -> None:
        """Wait until one more request may start."""
        now = self._clock()
        due = now if self._next is None else max(self._next, now)
        start = max(now, due - self._slack)
        self._next = due + self._interval
        if start > now:
            await self._sleep(start - now)


def backoff_delay(
    retry: int,
    *,
    initial_s: float,
    max_s: float,
    retry_after: float | None,
    rng: random.Random,
) -> float:
    """Seconds to wait before retry number ``retry`` (0 for the first).

    Full jitter (``uniform(0, min(max, initial * 2**retry))``) spreads the retries of
    many batches that failed together, so they do not hit TikTok again in one wave.
    A server's ``Retry-After`` is a floor; ``max_s`` caps everything.
    """
    ceiling = min(max_s, initial_s * 2.0 ** min(retry, 60))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max_s)
