"""Building blocks of the sink's unit tests, imported by them: events, batches and
configs; TikTok's answers and fakes of TikTok (``FakeTikTok`` for bad payloads,
``TokenGate`` for tokens); an injected sleep that records, a virtual clock; and a started
sender against httpx.MockTransport with helpers that wait for its outcomes. A plain
module, not a test module: it holds no tests.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from processor.batching import Batch, PendingEvent
from processor.config import AccessToken, DeliveryConfig, Secret, TikTokConfig
from processor.mapping import MappedEvent
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sink import BatchOutcome, Sender

PIXEL = "D34FV3JC77U1PDQ72P1G"
ENDPOINT = "https://tiktok.test/open_api/v1.3/event/track/"
# Distinctive, so a leak anywhere is found by a plain substring search.
TOKEN = "tok-5be1c0de-never-log-me"
NEW_TOKEN = "tok-77aa00ff-rotated-never-log-me"
WAIT_S = 60.0  # generous: the machine is shared and slow; tests never wait this long when green

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


# -- events, batches and configs -----------------------------------------------------------


def pending(i: int, *, bad: bool = False, event: str = "ViewContent") -> PendingEvent:
    payload: dict[str, Any] = {"event": event, "event_time": 1767225600, "event_id": f"e-{i}"}
    if bad:
        payload["bad"] = True  # the fake TikTok rejects requests carrying such an event
    return PendingEvent.of(i, MappedEvent.of("views", "web", PIXEL, None, payload))


def a_batch(refs: range | list[int], *, bad: frozenset[int] = frozenset()) -> Batch:
    return Batch(BatchKey("web", PIXEL, None), [pending(i, bad=i in bad) for i in refs])


def tiktok(
    token: str | None = TOKEN, *, file: Path | None = None, partner: str | None = None
) -> TikTokConfig:
    secret = Secret(token) if token else None
    return TikTokConfig(
        PIXEL,
        AccessToken("TIKTOK_ACCESS_TOKEN", secret, file),
        endpoint=ENDPOINT,
        partner_name=partner,
    )


def delivery(**overrides: Any) -> DeliveryConfig:
    settings_: dict[str, Any] = {
        "max_in_flight": 4,
        "max_requests_per_s": 10_000.0,
        "max_retries": 3,
        "backoff_initial_ms": 1,
        "backoff_max_ms": 30_000,
        "request_timeout_s": 5.0,
    }
    settings_.update(overrides)
    return DeliveryConfig(**settings_)


# -- TikTok's side -------------------------------------------------------------------------


def envelope(code: int, message: str = "", status: int = 200, **headers: str) -> httpx.Response:
    body = {"code": code, "message": message or ("OK" if code == 0 else "Error"), "data": {}}
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def sent_events(request: httpx.Request) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = orjson.loads(request.content)["data"]
    return events


def sent_refs(request: httpx.Request) -> list[int]:
    return [int(e["event_id"].removeprefix("e-")) for e in sent_events(request)]


def ok(_request: httpx.Request) -> httpx.Response:
    return envelope(0)


class FakeTikTok:
    """Rejects any request carrying a ``bad`` event with 40002, naming it as TikTok and
    the sandbox do (``data[i]``), or not naming it, or naming the wrong one."""

    def __init__(self, naming: str = "index") -> None:
        self.naming = naming
        self.requests: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        events = sent_events(request)
        with self.lock:
            self.requests.append(sent_refs(request))
        bad = [i for i, e in enumerate(events) if e.get("bad")]
        if not bad:
            return envelope(0)
        where = {"index": f"data[{bad[0]}].event_id", "none": "event_id", "wrong": "data[0].x"}
        return envelope(40002, f"Invalid value for {where[self.naming]}: not a valid string")


class TokenGate:
    """Accepts only ``valid`` tokens (40105 for any other), recording the token of each call."""

    def __init__(self, *valid: str) -> None:
        self.valid = set(valid)
        self.tokens: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Access-Token", "")
        with self.lock:
            self.tokens.append(token)
        if token in self.valid:
            return envelope(0)
        return envelope(40105, "Access token is incorrect or has been revoked")


# -- time ----------------------------------------------------------------------------------


class SleepRecorder:
    """An injected sleep that records each delay and returns at once (just yielding)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class VirtualTime:
    """A fake clock and sleep for the sender's loop. Sleepers wake in deadline order, and
    the clock jumps to the next deadline only after every runnable task has had many
    turns, so what happens "at" a virtual instant happens before time moves on."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._driver: asyncio.Task[None] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), wake))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await wake

    async def _drive(self) -> None:
        while self._sleepers:
            for _ in range(50):
                await asyncio.sleep(0)
            deadline, _, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                self.now = max(self.now, deadline)
                wake.set_result(None)


# -- a running sender ----------------------------------------------------------------------


@contextmanager
def running(
    handler: Handler,
    *,
    config: TikTokConfig | None = None,
    metrics: Metrics | None = None,
    close_timeout: float = 5.0,
    **options: Any,
) -> Iterator[Sender]:
    """A started sender whose requests go to ``handler``; closed afterwards.
    ``options``: delivery overrides, or Sender keyword arguments."""
    sender_keys = {"sleep", "clock", "rng", "token_check_interval_s", "rate_burst", "on_completion"}
    sender_options = {k: v for k, v in options.items() if k in sender_keys}
    sender_options.setdefault("sleep", SleepRecorder())
    sender_options.setdefault("rng", random.Random(1))
    delivery_options = {k: v for k, v in options.items() if k not in sender_keys}
    sender = Sender(
        config or tiktok(),
        delivery(**delivery_options),
        metrics or Metrics(),
        transport=httpx.MockTransport(handler),
        **sender_options,
    )
    sender.start()
    try:
        yield sender
    finally:
        sender.close(close_timeout)


def reading_token_file(
    handler: Handler, token_file: Path, *, token_check_interval_s: float = 0.02, **options: Any
) -> AbstractContextManager[Sender]:
    """``running`` with the access token read from ``token_file`` and re-read every
    ``token_check_interval_s``. Its sleep is the real one: the sender waits between token
    checks with it, and a sleep that returns at once would turn that wait into a busy loop."""
    return running(
        handler,
        config=tiktok(None, file=token_file),
        sleep=asyncio.sleep,
        token_check_interval_s=token_check_interval_s,
        **options,
    )


def outcomes(sender: Sender, count: int, timeout: float = WAIT_S) -> list[BatchOutcome]:
    """Wait for ``count`` outcomes (fails the test after ``timeout``)."""
    done: list[BatchOutcome] = []
    deadline = time.monotonic() + timeout
    while len(done) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"only {len(done)} of {count} batches completed in {timeout}s")
        sender.wait(min(left, 0.5))
        done += sender.poll_completions()
    return done


def wait_for(condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.005)


def accepted_refs(done: list[BatchOutcome]) -> list[int]:
    return sorted(int(p.ref) for o in done for p in o.accepted)


def rejected_refs(done: list[BatchOutcome]) -> list[int]:
    return sorted(int(p.ref) for o in done for p, _ in o.rejected)
