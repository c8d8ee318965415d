"""The TikTok sink: classified, rate-limited, retried, bisected delivery of batches.

This package is the only place that imports ``httpx``. Layout (arrows point one way)::

    tenants ─► sender ─► runtime ─► client ─► classify   one answer → success/partial/
                 │          │                            retryable/bad/fatal (pure;
                 │          │                            the table below)
                 │          └─────► pacing               rate limiter (token bucket)
                 └────────────────► pacing               backoff with jitter

``tenants`` (:class:`TenantRouter`, what the loop is given) routes each batch to the
:class:`Sender` of its pixel's token (``tiktok.pixels``, else the default token); every
sender runs on one ``runtime`` (the loop thread, the HTTP client, the in-flight slots
and the rate limit). One tenant's halt holds only its own batches.

Threading contract
------------------
The poll thread (which owns every Kafka call) talks to :class:`TenantRouter` and
:class:`Sender` only through ``start()``, ``submit(batch)``, ``poll_completions()``,
``wait(timeout)``, the ``in_flight_batches``, ``halted`` and ``partly_halted``
properties and ``close(timeout)``; all of them are thread-safe, and only ``start``,
``wait`` and ``close`` ever block. Everything else runs on the runtime's own thread,
an asyncio loop with one ``httpx.AsyncClient``.
Finished batches travel back as :class:`BatchOutcome` objects through a lock-guarded
queue; a batch is reported exactly once, when all of its events are accepted or
rejected for good, and a batch still unfinished at ``close`` is cancelled and never
reported (so the caller never commits it).

Classification
--------------
TikTok answers errors as HTTP 200 with a non-zero code, so the envelope's ``code`` is
read first and the status only when there is none. Every answer is one of success,
partial, retryable, bad payload or fatal: the table is in docs/ARCHITECTURE.md
("Classifying TikTok's answers"), and in code in :mod:`processor.sink.classify`.

- *retry*: exponential backoff with full jitter (``backoff_initial_ms`` doubling, capped
  at ``backoff_max_ms``), at least the server's ``Retry-After``; a waiting request holds
  no in-flight slot. Without ``max_retries`` it retries until delivered (an outage
  pauses the pipeline through backpressure); with it, after that many retries its
  events are rejected as
  ``gave up after N retries: <last reason>``.
- *bisect*: one bad event fails the whole request. A single event is rejected with
  TikTok's code and message; a larger batch is split (the event the message names as
  ``data[i]`` against the rest, else halves) and each part is delivered on its own.
  A reason's ``data[i]`` is renumbered to the event's index in the submitted batch
  (see :class:`BatchOutcome`).
- *halt* (of one tenant: its token's requests): nothing is sent, completed or
  rejected; ``halted`` gives the reason and the ``sink_fatal{pixel=…}`` gauge is 1.
  The token source is re-read every ``token_check_interval_s``; a different token
  is *tried*: the held requests go on from where they stopped, one at a time, and the
  halt ends only once TikTok accepts one of them (or refuses it for its content). A
  new token refused too keeps the sender halted, without a "resumed" in between. A
  token from the environment never changes: halted until restart.

Limits (of the process, shared by every tenant): at most ``max_in_flight`` requests
at once; at most ``max_requests_per_s`` request starts a second across first
attempts, retries and bisection requests.

Secrets: each token is read from its :class:`~processor.config.AccessToken` and
revealed only into the ``Access-Token`` header of its own tenant's requests; reasons,
outcomes, logs and metrics never hold it (exception messages are never copied, and any
echo of it is scrubbed by the sender that sent it).
"""

from __future__ import annotations

from processor.sink.classify import Classification, RetryReason, Verdict, classify
from processor.sink.client import TikTokClient
from processor.sink.pacing import RateLimiter, backoff_delay
from processor.sink.runtime import SinkRuntime
from processor.sink.sender import BatchOutcome, Sender
from processor.sink.tenants import Tenant, TenantRouter

__all__ = [
    "BatchOutcome",
    "Classification",
    "RateLimiter",
    "RetryReason",
    "Sender",
    "SinkRuntime",
    "Tenant",
    "TenantRouter",
    "TikTokClient",
    "Verdict",
    "backoff_delay",
    "classify",
]
