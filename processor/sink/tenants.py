"""Tokens per pixel: :class:`TenantRouter`, the loop's sender of every process.

TikTok issues the Events API access token per pixel, so ``tiktok.pixels`` lists the
event source ids (pixel codes, event set ids) that carry a token of their own; every
other id uses the default token. Each of those tokens is a *tenant*, and each tenant
has a :class:`~processor.sink.sender.Sender` of its own: its token, its halt, its token
trial after a rotation, its ``sink_fatal{pixel=…}`` gauge. All of them run on one
:class:`~processor.sink.runtime.SinkRuntime` (one loop thread, one connection pool, one
set of in-flight slots, one rate limit), so the delivery limits are the process's.

How the router keeps the loop's contract (processor/loop.py, ``BatchSender``):

- ``submit`` routes a batch by its key's event source id and never blocks. A halted
  tenant's batches are submitted to its sender all the same, which *holds* them: their
  requests wait at its gate, holding no in-flight slot, and are tried with the next
  token its file holds. A held event is neither accepted nor rejected, so its record
  stays not done in the ledger and nothing is committed past it; nothing is
  dead-lettered for a token.
- ``halted`` keeps the loop's meaning, "nothing can be delivered": the reason only when
  every tenant is halted (the loop then pauses consumption and hands nothing over).
  ``partly_halted`` names the halted tenants while others deliver
  (``pixel shop-eu: 40105 …``): readiness fails on it, consumption goes on.
- Memory stays bounded: held events are outstanding events of the loop, so once
  ``delivery.max_buffered_events`` of them (held or not) wait, the loop pauses every
  partition, as for any backlog, until delivery catches up.
- ``poll_completions`` hands back every tenant's finished batches; ``wait`` wakes on
  any of them; ``close`` closes every tenant within one deadline, then the runtime.

Secrets: each sender reveals its own token only into its requests' header and redacts
it from every reason it hands back or logs; a request carries one token, so an answer
can only echo that one.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from processor.batching import Batch
from processor.config import DEFAULT_TENANT, AccessToken, DeliveryConfig, TikTokConfig
from processor.metrics import Metrics
from processor.payload import BatchKey
from processor.sink.runtime import SinkRuntime
from processor.sink.sender import BatchOutcome, Sender, Sleep


@dataclass(frozen=True, slots=True)
class Tenant:
    """One token and its sender: ``name`` is its ``pixel`` label, ``who`` its name in
    readiness and logs (``pixel shop-eu``, ``default token``)."""

    name: str
    who: str
    sender: Sender


def event_source_id(key: BatchKey) -> str:
    """The event source id (pixel code or event set id) a batch is sent for."""
    return key.event_source_id


class TenantRouter:
    """One :class:`Sender` per token behind the loop's ``BatchSender`` interface; see
    the module docstring. The seams are the :class:`Sender`'s (``transport``, ``rng``,
    ``clock``, ``sleep``, ``token_check_interval_s``, ``rate_burst``, ``on_completion``).
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
    ) -> None:
        self._runtime = SinkRuntime(
            tiktok, delivery, metrics, transport=transport, clock=clock, sleep=sleep,
            rate_burst=rate_burst,
        )  # fmt: skip
        self._outcome_waiting = threading.Event()
        self._on_completion = on_completion
        # With one token the sender's log lines name nobody, as they always have.
        several = bool(tiktok.pixels)

        def tenant(name: str, who: str, token: AccessToken, logged_as: str) -> Tenant:
            sender = Sender(
                tiktok,
                delivery,
                metrics,
                rng=rng,
                sleep=sleep,
                token_check_interval_s=token_check_interval_s,
                on_completion=self._completed,
                runtime=self._runtime,
                access_token=token,
                tenant=name,
                who=logged_as if several else None,
            )
            return Tenant(name, who, sender)

        self._default = tenant(
            DEFAULT_TENANT, "default token", tiktok.access_token, "the default token"
        )
        self._routes: dict[str, Tenant] = {}
        for pixel in tiktok.pixels:
            who = f"pixel {pixel.name}"
            self._routes[pixel.event_source_id] = tenant(pixel.name, who, pixel.access_token, who)
        self._tenants = (self._default, *self._routes.values())

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        """The default token's tenant first, then ``tiktok.pixels`` in their order."""
        return self._tenants

    def tenant_of(self, key: BatchKey) -> Tenant:
        """The tenant whose token a batch of ``key`` is sent with."""
        return self._routes.get(event_source_id(key), self._default)

    # -- the loop's BatchSender ----------------------------------------------------------

    def start(self) -> None:
        """Start the runtime and every tenant (each loads its token; one without a
        usable token starts halted and waits for one)."""
        for tenant in self._tenants:
            tenant.sender.start()

    def submit(self, batch: Batch) -> None:
        """Hand a batch to its tenant's sender (held there while that tenant is halted).
        Thread-safe, never blocks."""
        self.tenant_of(batch.key).sender.submit(batch)

    def poll_completions(self) -> list[BatchOutcome]:
        """Every tenant's outcomes finished since the last call. Never blocks."""
        # Cleared first: an outcome queued while the tenants are read sets it again, and
        # the next wait() returns at once rather than sleeping on it.
        self._outcome_waiting.clear()
        done: list[BatchOutcome] = []
        for tenant in self._tenants:
            done += tenant.sender.poll_completions()
        return done

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until some tenant has an outcome waiting."""
        return self._outcome_waiting.wait(max(0.0, timeout))

    @property
    def in_flight_batches(self) -> int:
        return sum(t.sender.in_flight_batches for t in self._tenants)

    @property
    def halted(self) -> str | None:
        """Why nothing can be delivered: every tenant is halted. None while any
        delivers. With one token, that sender's reason as it gives it."""
        halted = self._halted()
        if not halted or len(halted) < len(self._tenants):
            return None
        if len(self._tenants) == 1:
            return halted[0][1]
        return _describe(halted)

    @property
    def held_events(self) -> int:
        """Events held by halted tenants: they finish only once a token changes."""
        return sum(t.sender.held_events for t in self._tenants)

    @property
    def partly_halted(self) -> str | None:
        """The halted tenants while others deliver (``pixel shop-eu: 40105 …``), else None."""
        halted = self._halted()
        if not halted or len(halted) == len(self._tenants):
            return None
        return _describe(halted)

    def close(self, timeout: float) -> None:
        """Close every tenant's sender within ``timeout`` seconds in all (batches still
        unfinished then are cancelled, never reported), then the runtime. Idempotent."""
        deadline = time.monotonic() + max(0.0, timeout)
        # The delivering tenants first: a halted one completes nothing while it waits.
        for tenant in sorted(self._tenants, key=lambda t: t.sender.halted is not None):
            tenant.sender.close(max(0.0, deadline - time.monotonic()))
        self._runtime.stop()

    # -- inside --------------------------------------------------------------------------

    def _halted(self) -> list[tuple[Tenant, str]]:
        return [(t, reason) for t in self._tenants if (reason := t.sender.halted)]

    def _completed(self) -> None:
        # On the runtime's loop thread, after a tenant queued an outcome.
        self._outcome_waiting.set()
        if self._on_completion is not None:
            self._on_completion()


def _describe(halted: list[tuple[Tenant, str]]) -> str:
    return "; ".join(f"{tenant.who}: {reason}" for tenant, reason in halted)
