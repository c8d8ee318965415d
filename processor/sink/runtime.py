"""What every sender of a process shares: :class:`SinkRuntime`.

One asyncio loop on its own thread, one ``httpx.AsyncClient`` (one connection pool), the
in-flight slots (``delivery.max_in_flight``) and the rate limiter
(``delivery.max_requests_per_s``). A process with one token has one sender on it; with
a token per pixel (``tiktok.pixels``) each tenant's sender runs on the same runtime, so
the delivery limits stay limits of the whole process however many tenants there are,
and a halted tenant, whose requests wait before taking a slot, holds none of them.

Thread-safety: :meth:`start` and :meth:`stop` are called from the poll thread (through
the senders or the router); everything else (``client``, ``slots``, ``limiter``) is used
on the runtime's loop only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import httpx

from processor.config import DeliveryConfig, TikTokConfig
from processor.errors import ConfigError
from processor.metrics import Metrics
from processor.sink.client import TikTokClient
from processor.sink.pacing import RateLimiter

log = logging.getLogger("processor.sink")

Sleep = Callable[[float], Awaitable[None]]

#: How long stop() waits for the connections to close and the thread to end.
SHUTDOWN_TIMEOUT_S = 10.0


class SinkRuntime:
    """The loop thread, HTTP client, in-flight slots and rate limiter senders share.

    Seams for tests: ``transport`` (an ``httpx.AsyncBaseTransport``), ``clock`` and
    ``sleep`` (the rate limiter's), ``rate_burst`` (requests that may start at once).
    """

    def __init__(
        self,
        tiktok: TikTokConfig,
        delivery: DeliveryConfig,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rate_burst: int = 1,
    ) -> None:
        check_delivery(delivery)
        self.client = TikTokClient(
            tiktok,
            metrics,
            timeout_s=delivery.request_timeout_s,
            max_connections=delivery.max_in_flight,
            transport=transport,
        )
        # asyncio primitives bind to the loop that first uses them: the runtime's.
        self.slots = asyncio.Semaphore(delivery.max_in_flight)
        self.limiter = RateLimiter(
            delivery.max_requests_per_s, burst=rate_burst, clock=clock, sleep=sleep
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> asyncio.AbstractEventLoop:
        """The running loop, its thread started at the first call."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("the sink runtime is stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_loop, args=(loop,), name="tiktok-sender", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self) -> None:
        """Close the connections and end the loop thread (idempotent). Call once every
        sender on it has cancelled its work."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if self._stopped:
                return
            self._stopped = True
        if loop is None or thread is None:
            return
        closing = asyncio.run_coroutine_threadsafe(self.client.aclose(), loop)
        try:
            closing.result(SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            log.error("sender: the connections did not close within %ss", SHUTDOWN_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SHUTDOWN_TIMEOUT_S)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def check_delivery(delivery: DeliveryConfig) -> None:
    """:class:`ConfigError` naming every delivery setting the sink cannot work with."""
    problems = []
    if delivery.max_in_flight < 1:
        problems.append("delivery.max_in_flight: must be at least 1")
    if not delivery.max_requests_per_s > 0:
        problems.append("delivery.max_requests_per_s: must be above 0")
    if delivery.max_retries is not None and delivery.max_retries < 0:
        problems.append("delivery.max_retries: must be 0 or more")
    if not 0 <= delivery.backoff_initial_ms <= delivery.backoff_max_ms:
        problems.append("delivery.backoff_initial_ms: must be between 0 and backoff_max_ms")
    if not delivery.request_timeout_s > 0:
        problems.append("delivery.request_timeout_s: must be above 0")
    if problems:
        raise ConfigError(problems)
