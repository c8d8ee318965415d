"""One request to the Events API: :class:`TikTokClient`.

Owns the wire: the endpoint check, the request body (``payload.encode_request``, from
the events as they were encoded when mapped), the ``Access-Token`` header, the
per-request timeout, and the request metrics (``requests{outcome,code}``,
``request_duration``, ``batch_size``, ``in_flight_requests``). Every answer, or
exception, is turned into a :class:`~processor.sink.classify.Classification`;
:meth:`TikTokClient.send` never raises for anything the network or TikTok does.

The token is revealed only into the header of the request being built and into the
redaction of reasons: TikTok's message is redacted of it before it is shortened (in
:func:`~processor.sink.classify.classify`), and every reason is scrubbed once more
before it leaves this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import httpx

from processor.batching import PendingEvent
from processor.config import Secret, TikTokConfig
from processor.errors import ConfigError
from processor.metrics import Metrics
from processor.payload import BatchKey, encode_request
from processor.redact import redact
from processor.sink.classify import Classification, classify

USER_AGENT = "tiktok-events-processor"


def check_endpoint(endpoint: str) -> str:
    """The endpoint, if it is an http(s) URL with a host; else :class:`ConfigError`.

    Checked when the sink is built, so a typo fails at start-up rather than as a
    stream of failed requests."""
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise ConfigError([f"tiktok.endpoint: not a valid URL ({exc})"]) from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(["tiktok.endpoint: must be an http:// or https:// URL with a host"])
    return endpoint


def _uses_tls(endpoint: str) -> bool:
    """False only for a plain ``http://`` endpoint: anything else verifies certificates."""
    return httpx.URL(endpoint).scheme != "http"


def is_sendable(token: Secret) -> bool:
    """Whether the token can be put in an HTTP header as it is (visible ASCII, no spaces).

    A token that cannot be sent is treated like a refused one: the sink halts until the
    file holds a better one (HTTP libraries would otherwise quote it in their errors)."""
    value = token.reveal()
    return bool(value) and all(33 <= ord(char) <= 126 for char in value)


def default_transport(max_connections: int, *, tls: bool = True) -> httpx.AsyncHTTPTransport:
    """Keep-alive connections, one per request allowed in flight; no transport retries
    (the sender retries, with backoff and the rate limit). ``tls=False``, for a plain
    ``http://`` endpoint (the sandbox), skips loading the CA bundle that no request
    would use (a sixth of a second of CPU at every start)."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncHTTPTransport(limits=limits, retries=0, verify=tls)


def encode_body(key: BatchKey, items: Sequence[PendingEvent], partner_name: str | None) -> bytes:
    """The request body of one batch, ``data[i]`` being ``items[i]``."""
    return encode_request(key, [item.data for item in items], partner_name)


class TikTokClient:
    """Sends one batch as one request and classifies the answer.

    Async: use it from one event loop (the sender's). ``transport`` replaces the HTTP
    transport (tests pass ``httpx.MockTransport``); ``clock`` times requests.
    """

    def __init__(
        self,
        tiktok: TikTokConfig,
        metrics: Metrics,
        *,
        timeout_s: float,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be above 0, not {timeout_s}")
        self._endpoint = check_endpoint(tiktok.endpoint)
        self._partner_name = tiktok.partner_name
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._clock = clock
        self._http = httpx.AsyncClient(
            transport=transport
            if transport is not None
            else default_transport(max_connections, tls=_uses_tls(self._endpoint)),
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # a redirect means a wrong endpoint: classified fatal
            headers={"User-Agent": USER_AGENT},
        )

    async def send(
        self, key: BatchKey, items: Sequence[PendingEvent], token: Secret
    ) -> Classification:
        """POST ``items`` (one batch key) with ``token``; the classified answer."""
        secrets = (token.reveal(),)
        content = encode_body(key, items, self._partner_name)
        headers = {"Access-Token": token.reveal(), "Content-Type": "application/json"}
        started = self._clock()
        self._metrics.in_flight_requests.inc()
        try:
            result = await self._post(content, headers, secrets)
        finally:
            self._metrics.in_flight_requests.dec()
        result = _scrubbed(result, secrets)
        self._metrics.request_duration.observe(max(0.0, self._clock() - started))
        self._metrics.batch_size.observe(len(items))
        self._metrics.requests.labels(result.verdict.value, result.code).inc()
        return result

    async def _post(
        self, content: bytes, headers: dict[str, str], secrets: tuple[str, ...]
    ) -> Classification:
        try:
            # httpx's timeout bounds each phase (connect, write, each read); this bounds
            # the whole request, so a slowly dripping answer cannot hold a slot forever.
            async with asyncio.timeout(self._timeout_s):
                response = await self._http.post(self._endpoint, content=content, headers=headers)
        except Exception as exc:  # every failure is classified; cancellation is not caught
            return classify(None, None, exc)
        return classify(
            response.status_code,
            response.content,
            None,
            retry_after=response.headers.get("Retry-After"),
            secrets=secrets,
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _scrubbed(result: Classification, secrets: tuple[str, ...]) -> Classification:
    # Defence in depth: classify() has redacted TikTok's message before shortening it,
    # but a reason may come from elsewhere, and any echo of the token must stay out of
    # dead-letter headers and log lines. The reason is bounded already, so this never
    # sees it cut.
    reason = redact(result.reason, secrets)
    return result if reason == result.reason else replace(result, reason=reason)
