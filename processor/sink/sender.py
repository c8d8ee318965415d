"""The sender: batches in from the poll thread, requests out on an asyncio loop thread.

Owns :class:`Sender` and :class:`BatchOutcome`: bounded concurrency, the shared rate
limit, retries with backoff, bisection of rejected batches, the halt on token and
permission errors, and the hand-back of finished batches. See the package docstring
for the threading contract and the classification table.

How one submitted batch travels (all on the loop thread)::

    submit ─► _deliver ─► _deliver_part(items)
                            └─ _send_with_retries ─► _attempt ─► gate (halted? wait)
                                                               ─► in-flight slot (semaphore)
                                                               ─► rate limiter
                                                               ─► TikTokClient.send
                              delivered   → accepted
                              retryable   → sleep (no slot held), again; after
                                            max_retries (if set) → rejected
                                            "gave up after N retries: …"
                              bad payload → one event: rejected with TikTok's message;
                                            more: split (the event TikTok names, or halves),
                                            each part again from the top
                              fatal       → halt; the request waits at the gate and is
                                            sent again once a new token is loaded
    ─► BatchOutcome on the completion queue (once, when every part has finished)

How a halt ends::

    halted ─► the token source holds a token other than the refused one
           ─► trying: the gate opens for the held requests, one request at a time, while
              ``halted`` still holds the reason and ``sink_fatal`` stays 1
                 TikTok judges the events (accepted, or refused for their content)
                                          → resumed ("delivery resumed: TikTok accepted …")
                 refused for the token too → halted again, one "still halted" line, and
                                             the source is watched for yet another token
                 no request left to try it → resumed (nothing can prove the token)
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import httpx

from processor.batching import Batch, PendingEvent
from processor.config import DEFAULT_TENANT, AccessToken, DeliveryConfig, Secret, TikTokConfig
from processor.matchkeys import key_labels
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.redact import redact, shorten
from processor.sink.classify import Classification, RetryReason, Verdict, renumber_events
from processor.sink.client import is_sendable
from processor.sink.pacing import backoff_delay
from processor.sink.runtime import SHUTDOWN_TIMEOUT_S, SinkRuntime, check_delivery

log = logging.getLogger("processor.sink")

Sleep = Callable[[float], Awaitable[None]]

#: How long close() waits for the loop to cancel its tasks.
_SHUTDOWN_TIMEOUT_S = SHUTDOWN_TIMEOUT_S
#: Longest part of a rejection reason repeated in the log.
_LOGGED_REASON = 80


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of one submitted batch. Every event of ``batch`` is in exactly one of
    ``accepted`` and ``rejected``; a rejection's reason is TikTok's code and message
    (``40002 Invalid value for data[3].event_id: …``) or the give-up reason (``gave up
    after 8 retries: HTTP 503``). ``partial``: some request of it was answered 20001.

    Every ``data[i]`` in a reason is the event's index in ``batch``, whichever request
    TikTok answered: a rejected batch is bisected, and TikTok numbers the events of the
    smaller request it was sent (an index that request did not have is left as TikTok
    wrote it). An event rejected after it was sent alone, out of a larger batch, also
    says so at the end::

        40002 Invalid value for data[417].event_id: not a valid string (event 417 of a
        batch of 1000, isolated)
    """

    batch: Batch
    accepted: list[PendingEvent]
    rejected: list[tuple[PendingEvent, str]]
    partial: bool = False


class _Tally:
    """One batch's results so far, while its parts are under way (loop thread only)."""

    __slots__ = ("_places", "accepted", "items", "partial", "rejected", "trust_hints")

    def __init__(self, items: Sequence[PendingEvent]) -> None:
        self.items = items
        self.accepted: list[PendingEvent] = []
        self.rejected: list[tuple[PendingEvent, str]] = []
        self.partial = False
        # Trust the data[i] a rejection names until it once names an event that is fine.
        self.trust_hints = True
        self._places: dict[int, int] | None = None  # built at the first rejection of a part

    def in_batch_terms(self, reason: str, part: Sequence[PendingEvent]) -> str:
        """``reason``, TikTok's answer to a request carrying ``part``, with its ``data[i]``
        renumbered to the events' indexes in the whole batch (the BatchOutcome format)."""
        if len(part) == len(self.items):
            return reason  # the whole batch (a part is always smaller): numbered already
        if self._places is None:
            self._places = {id(item): i for i, item in enumerate(self.items)}
        places = [self._places[id(item)] for item in part]
        text = renumber_events(reason, places)
        if len(part) == 1:
            text += f" (event {places[0]} of a batch of {len(self.items)}, isolated)"
        return text


#: Retries whose wait TikTok set (rate limits): never cut short by another's success.
_PACED: Final = frozenset({RetryReason.RATE_LIMITED, RetryReason.HTTP_429})


class Sender:
    """Sends batches to TikTok on its runtime's thread; see the package docstring.

    Seams for tests: ``transport`` (an ``httpx.AsyncBaseTransport``, e.g.
    ``httpx.MockTransport``), ``rng`` (backoff jitter), ``clock`` (the rate limiter's)
    and ``sleep`` (rate limiter, backoff and token checks; awaited on the loop thread).
    ``rate_burst``: requests the rate limiter lets start at once (1: evenly spaced).
    ``on_completion`` is called on the loop thread after each outcome is queued; it
    must be thread-safe and quick (e.g. set an event the poll loop waits on).

    One tenant of several (see :mod:`processor.sink.tenants`): ``runtime`` is the loop,
    client and limits it shares with the others (then ``transport``, ``clock`` and
    ``rate_burst`` are the runtime's, and closing this sender leaves the runtime
    running); ``access_token`` is its token (default: ``tiktok.access_token``);
    ``tenant`` is its ``pixel`` label on ``sink_fatal``, and ``who`` names it in log
    lines ("pixel shop-eu"; None: the only sender, whose lines name nobody).
    """

    def __init__(
        self,
        tiktok: TikTokConfig,
        delivery: DeliveryConfig,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        token_check_interval_s: float = 2.0,
        rate_burst: int = 1,
        on_completion: Callable[[], None] | None = None,
        runtime: SinkRuntime | None = None,
        access_token: AccessToken | None = None,
        tenant: str = DEFAULT_TENANT,
        who: str | None = None,
    ) -> None:
        check_delivery(delivery)
        if not token_check_interval_s > 0:
            raise ValueError("token_check_interval_s must be above 0")
        self._access_token = tiktok.access_token if access_token is None else access_token
        self._metrics = metrics
        self._fatal = metrics.sink_fatal.labels(tenant)
        self._for = "" if who is None else f" for {who}"
        self._max_retries = delivery.max_retries
        self._backoff_initial_s = delivery.backoff_initial_ms / 1000
        self._backoff_max_s = delivery.backoff_max_ms / 1000
        self._token_check_interval_s = token_check_interval_s
        # Not for security: jitter only has to spread retries apart.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._sleep = sleep
        self._on_completion = on_completion
        self._owns_runtime = runtime is None
        if runtime is None:
            runtime = SinkRuntime(
                tiktok, delivery, metrics, transport=transport, clock=clock, sleep=sleep,
                rate_burst=rate_burst,
            )  # fmt: skip
        self._runtime = runtime
        self._client = runtime.client
        self._slots = runtime.slots
        self._limiter = runtime.limiter
        # asyncio primitives bind to the loop that first uses them: the runtime's.
        self._resumed = asyncio.Event()  # the gate: set while requests may go out
        # One request at a time tries a new token (see _attempt).
        self._trial_lock = asyncio.Lock()
        # Set (and replaced) when a request is delivered, waking the retries backing off.
        self._recovered = asyncio.Event()
        self._backing_off = 0

        # Shared with the poll thread, under _lock.
        self._lock = threading.Lock()
        self._completions_ready = threading.Condition(self._lock)
        self._completed: deque[BatchOutcome] = deque()
        self._in_flight = 0
        self._in_flight_events = 0
        self._state = "new"  # → running → closing → closed
        self._halted: str | None = None
        self._broken: str | None = None  # an internal error: halted for good

        # Loop thread only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._token: Secret | None = None
        # A new token loaded after a refusal and not yet shown to work: the gate is open
        # for it, but the sender still reports itself halted.
        self._trial: Secret | None = None
        self._sending = 0  # requests under way (waiting, sent or between retries)
        self._stopping = False

    # -- the poll thread's API ---------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (unless the shared runtime runs already) and load the
        token (once). With no usable token the sender starts halted and waits for one."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"the sender is {self._state}; it starts once")
            self._state = "running"
        loop = self._runtime.start()
        self._loop = loop
        asyncio.run_coroutine_threadsafe(self._load_first_token(), loop).result()

    def submit(self, batch: Batch) -> None:
        """Hand a batch over for delivery. Thread-safe, never blocks; its outcome comes
        back through :meth:`poll_completions`. Raises RuntimeError unless running."""
        with self._lock:
            if self._state != "running" or self._loop is None:
                raise RuntimeError(f"cannot submit: the sender is {self._state}")
            self._in_flight += 1
            self._in_flight_events += len(batch.items)
            # Scheduled under the lock, so close() cannot slip in between.
            self._loop.call_soon_threadsafe(self._launch, batch)

    def poll_completions(self) -> list[BatchOutcome]:
        """The outcomes finished since the last call, oldest first. Never blocks."""
        with self._lock:
            done = list(self._completed)
            self._completed.clear()
        return done

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until an outcome is waiting; whether one is."""
        with self._completions_ready:
            if not self._completed:
                self._completions_ready.wait(max(0.0, timeout))
            return bool(self._completed)

    @property
    def in_flight_batches(self) -> int:
        """Batches submitted whose outcome is not queued yet (after close: the ones
        that were cancelled)."""
        with self._lock:
            return self._in_flight

    @property
    def halted(self) -> str | None:
        """Why delivery is halted (token or permission refused, no token), or None."""
        with self._lock:
            return self._broken or self._halted

    @property
    def partly_halted(self) -> str | None:
        """Always None: one sender is halted whole or not at all (the router of several
        tenants says which of them are halted while the others deliver)."""
        return None

    @property
    def held_events(self) -> int:
        """Events submitted and not finished while halted: held until the token changes
        (0 while delivering)."""
        with self._lock:
            return self._in_flight_events if (self._broken or self._halted) else 0

    def close(self, timeout: float) -> None:
        """Stop accepting batches, wait up to ``timeout`` seconds for those in flight,
        then cancel the rest and stop the loop thread. A cancelled batch is never
        reported, so its records are never committed. Idempotent."""
        with self._lock:
            state = self._state
            if state in ("closing", "closed"):
                return
            self._state = "closing"
        if state == "running":
            self._drain(timeout)
            self._stop_loop()
        with self._lock:
            self._state = "closed"

    # -- closing (poll thread) ---------------------------------------------------------

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._completions_ready:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._completions_ready.wait(left)

    def _stop_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        shutdown = asyncio.run_coroutine_threadsafe(self._cancel_everything(), loop)
        try:
            cancelled = shutdown.result(_SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            log.error("sender: the loop did not shut down within %ss", _SHUTDOWN_TIMEOUT_S)
            cancelled = -1
        if cancelled:
            log.warning(
                "sender%s closed with %s batches unfinished: cancelled, not reported, "
                "so their records stay uncommitted",
                self._for,
                cancelled if cancelled > 0 else "some",
            )
        if self._owns_runtime:
            self._runtime.stop()

    # -- the loop thread ---------------------------------------------------------------

    async def _cancel_everything(self) -> int:
        self._stopping = True
        batches = list(self._tasks)
        tasks = batches + ([self._watcher] if self._watcher is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(batches)

    def _launch(self, batch: Batch) -> None:
        if self._stopping:
            return  # close() is cancelling: this batch is dropped unreported, like the rest
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            # A bug, not TikTok: the batch can neither be reported nor dropped safely, so
            # stop the way a token error does (nothing past it is committed) and say so.
            log.error("sender: internal error delivering a batch", exc_info=error)
            with self._lock:
                self._broken = f"internal error in the sink ({type(error).__name__}); restart"
            self._fatal.set(1)

    async def _deliver(self, batch: Batch) -> None:
        tally = _Tally(batch.items)
        await self._deliver_part(batch.key, batch.items, tally, named=False)
        outcome = BatchOutcome(batch, tally.accepted, tally.rejected, tally.partial)
        # No await from here on: a batch is either reported whole or cancelled unreported.
        with self._lock:
            self._completed.append(outcome)
            self._in_flight -= 1
            self._in_flight_events -= len(batch.items)
            self._completions_ready.notify_all()
        if self._on_completion is not None:
            self._on_completion()

    async def _deliver_part(
        self, key: BatchKey, items: Sequence[PendingEvent], tally: _Tally, *, named: bool
    ) -> None:
        """Deliver ``items`` as one request, then as smaller parts if TikTok rejects it.
        ``named``: this is the single event a rejection's message pointed at."""
        if not items:
            return
        result, retries = await self._send_with_retries(key, items)
        if result.delivered:
            self._wake_backoffs()
            tally.accepted.extend(items)
            tally.partial |= result.verdict is Verdict.PARTIAL
            if named:
                tally.trust_hints = False  # the message named an event that was fine
            self._count_sent(items, "accepted")
            self._count_match_keys(key, items)
        elif result.verdict is Verdict.RETRYABLE:
            reason = f"gave up after {retries} retries: {result.reason}"
            self._reject(items, tally.in_batch_terms(reason, items), tally)
        elif len(items) == 1:
            self._reject(items, tally.in_batch_terms(result.reason, items), tally)
        else:
            parts = _split(items, result, tally)
            await asyncio.gather(
                *(self._deliver_part(key, part, tally, named=hint) for part, hint in parts)
            )

    async def _send_with_retries(
        self, key: BatchKey, items: Sequence[PendingEvent]
    ) -> tuple[Classification, int]:
        """The first answer that is not retryable, or the last one after max_retries
        retries; and how many retries it took."""
        self._sending += 1
        try:
            return await self._retried(key, items)
        finally:
            self._sending -= 1
            if self._sending == 0 and self._trial is not None and not self._stopping:
                # The requests trying the new token all gave up on retries (network, 5xx)
                # without TikTok refusing it: nothing is left to prove it, and the poll
                # loop need not hand another batch over (a lone sender gets none while
                # halted), so waiting could wait forever. A refusal halts again.
                self._resume("no request is left to try the new access token on")

    async def _retried(
        self, key: BatchKey, items: Sequence[PendingEvent]
    ) -> tuple[Classification, int]:
        retries = 0
        while True:
            result = await self._attempt(key, items)
            if result.verdict is not Verdict.RETRYABLE or (
                self._max_retries is not None and retries >= self._max_retries
            ):
                return result, retries
            self._metrics.retries.labels((result.retry_reason or RetryReason.NETWORK).value).inc()
            delay = backoff_delay(
                retries,
                initial_s=self._backoff_initial_s,
                max_s=self._backoff_max_s,
                retry_after=result.retry_after,
                rng=self._rng,
            )
            log.debug("retrying %d events in %.3fs: %s", len(items), delay, result.reason)
            # Sleeping outside the in-flight slot: a batch waiting to retry never blocks
            # other batches (and so other partitions).
            if result.retry_after is not None or result.retry_reason in _PACED:
                await self._sleep(delay)  # TikTok asked for the wait: it is kept
            else:
                await self._back_off(delay)
            retries += 1

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` seconds, or until a request is delivered: once an outage ends,
        the batches that met it go again at once instead of each sleeping out a backoff
        that has grown to ``backoff_max_ms`` (the rate limit and the in-flight slots
        still pace them)."""
        recovered = self._recovered
        self._backing_off += 1
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waiter = asyncio.ensure_future(recovered.wait())
        try:
            await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._backing_off -= 1
            sleeper.cancel()
            waiter.cancel()

    def _wake_backoffs(self) -> None:
        """A request was delivered: wake every retry that is backing off."""
        if self._backing_off:
            self._recovered.set()
            self._recovered = asyncio.Event()

    async def _attempt(self, key: BatchKey, items: Sequence[PendingEvent]) -> Classification:
        """One request that TikTok did not refuse for the token: sent again (without
        counting as a retry) after a halt is lifted."""
        while True:
            token = await self._usable_token()
            if token is self._trial:
                # A new token is tried by one request at a time: a wrong one is refused
                # once, not once by every request the halt held. One that waited while
                # the trial ended (either way) goes round again, outside the lock.
                async with self._trial_lock:
                    trying = token is self._trial
                    result = await self._send(key, items, token) if trying else None
            else:
                result = await self._send(key, items, token)
            if result is None:
                continue  # halted, the token changed or its trial ended, while it waited
            if result.verdict is Verdict.FATAL:
                self._halt(result.reason, token)
                continue
            if token is self._trial and _shows_token_accepted(result):
                self._resume("TikTok accepted the new access token")
            return result

    async def _send(
        self, key: BatchKey, items: Sequence[PendingEvent], token: Secret
    ) -> Classification | None:
        """TikTok's answer to one request with ``token``; None when the sender halted,
        or the token changed, while the request waited for its slot and its turn."""
        async with self._slots:
            await self._limiter.acquire()
            if not self._resumed.is_set() or token is not self._token:
                return None
            return await self._client.send(key, items, token)

    # -- halting on token and permission errors (loop thread) ---------------------------

    async def _usable_token(self) -> Secret:
        while not self._resumed.is_set():
            await self._resumed.wait()
        if self._token is None:  # resumed is only ever set with a token in place
            raise RuntimeError("sender resumed without a token")
        return self._token

    async def _load_first_token(self) -> None:
        token = self._read_token()
        if token is None:
            self._enter_halt(f"no usable access token in {self._access_token.source()}", None)
        else:
            self._token = token
            self._resumed.set()
            self._fatal.set(0)

    def _halt(self, reason: str, token: Secret) -> None:
        if token is not self._token or not self._resumed.is_set():
            return  # an answer to the old token after a rotation, or already halted
        if token is self._trial:
            # The halt never ended: one line, no "resumed" before it, and the token
            # source is watched for yet another token.
            self._trial = None
            self._resumed.clear()
            self._set_halted(reason)
            log.error("still halted%s: the new token was refused too: %s", self._for, reason)
            self._watch(token)
            return
        self._enter_halt(reason, token)

    def _enter_halt(self, reason: str, failed: Secret | None) -> None:
        self._resumed.clear()
        self._set_halted(reason)
        log.error(
            "delivery halted%s: %s; re-reading the token from %s every %gs",
            self._for,
            reason,
            self._access_token.source(),
            self._token_check_interval_s,
        )
        self._watch(failed)

    def _watch(self, failed: Secret | None) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch_token(failed))

    async def _watch_token(self, failed: Secret | None) -> None:
        """Wait until the token source holds a token other than the refused one, then
        open the gate for it (a token from the environment never changes: halted until
        restart)."""
        while True:
            current = self._read_token()
            if current is not None and current != failed:
                self._token = current
                if self._sending:
                    # A halt caused by a request holds that request (and any sent with
                    # the refused token): they try the new one, and TikTok's answer to
                    # them decides whether the halt is over.
                    self._trial = current
                    log.warning(
                        "trying the new access token%s from %s",
                        self._for,
                        self._access_token.source(),
                    )
                else:
                    # Nothing is held (no usable token at start, before any batch): no
                    # request can prove this token, and the poll loop need not hand a
                    # batch over (a lone sender gets none while halted; a tenant's are
                    # held here, so none came), so it is used as loaded. A refusal
                    # halts again.
                    self._resume(f"an access token was loaded from {self._access_token.source()}")
                self._resumed.set()
                return
            await self._sleep(self._token_check_interval_s)

    def _resume(self, why: str) -> None:
        self._trial = None
        self._set_halted(None)
        log.warning("delivery resumed%s: %s", self._for, why)

    def _read_token(self) -> Secret | None:
        token = self._access_token.current()
        if token is not None and not is_sendable(token):
            log.error(
                "the access token%s in %s cannot be sent in a header",
                self._for,
                self._access_token.source(),
            )
            return None
        return token

    def _set_halted(self, reason: str | None) -> None:
        with self._lock:
            self._halted = reason
        self._fatal.set(0 if reason is None else 1)

    # -- bookkeeping -------------------------------------------------------------------

    def _reject(self, items: Sequence[PendingEvent], reason: str, tally: _Tally) -> None:
        tally.rejected.extend((item, reason) for item in items)
        self._count_sent(items, "rejected")
        # The reason itself goes to the dead letter; the log keeps to what is safe to
        # repeat (TikTok's messages may quote event values). The client redacted the
        # reason already; redacting again before the split and the cut means neither
        # can ever leave the start of a token in the log.
        secrets = () if self._token is None else (self._token.reveal(),)
        head = redact(reason, secrets).split(":", 1)[0]
        log.warning("%d event(s) rejected for good: %s", len(items), shorten(head, _LOGGED_REASON))

    def _count_sent(self, items: Sequence[PendingEvent], outcome: str) -> None:
        for event, count in Counter(item.event for item in items).items():
            self._metrics.events_sent.labels(event, outcome).inc(count)

    def _count_match_keys(self, key: BatchKey, items: Sequence[PendingEvent]) -> None:
        """What TikTok got to match these accepted events with, by pixel, event and key."""
        counter = self._metrics.match_keys
        for (event, keys), count in Counter((i.event, i.match_keys) for i in items).items():
            for label in key_labels(keys):
                counter.labels(key.event_source_id, event, label).inc(count)


def _shows_token_accepted(result: Classification) -> bool:
    """Whether TikTok took the token to answer this: it judged the events (accepted them,
    or refused them for their content, which it checks after the token). A timeout, a
    5xx, a rate limit or a bare HTTP status may come before the token is looked at, or
    from a proxy."""
    return result.delivered or (
        result.verdict is Verdict.BAD_PAYLOAD and result.tiktok_code is not None
    )


def _split(
    items: Sequence[PendingEvent], rejection: Classification, tally: _Tally
) -> list[tuple[Sequence[PendingEvent], bool]]:
    """Parts to send instead of a rejected batch, each flagged when it is the one event
    the rejection named. One bad event fails the whole request, so isolating the named
    event costs 2 requests per bad event where halving costs about 2·log2(n)."""
    index = rejection.event_index() if tally.trust_hints else None
    if index is not None and 0 <= index < len(items) and len(items) > 2:
        rest = [*items[:index], *items[index + 1 :]]
        return [([items[index]], True), (rest, False)]
    middle = len(items) // 2
    return [(items[:middle], False), (items[middle:], False)]
