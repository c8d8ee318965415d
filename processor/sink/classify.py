"""Classifying one answer of the Events API, as a pure function (the table is in
docs/ARCHITECTURE.md).

Owns :func:`classify` and its result, :class:`Classification`. TikTok answers API
errors as HTTP 200 with a non-zero ``code`` in the ``{code, message, request_id, data}``
envelope, so the body's ``code`` decides whenever there is an envelope; the HTTP
status decides only when there is none. No I/O, no clock: the caller passes what it
saw (a status and body, or the exception the request raised).

The access token reaches this module only as a secret to redact: TikTok's message
is redacted of it *before* it is shortened to :data:`MAX_MESSAGE_CHARS`, so the cut
can never leave a part of the token behind (see :mod:`processor.redact`). Exception
*messages* are never copied into a reason (an HTTP library may quote header values in
them): only the exception's type name is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import httpx
import orjson

from processor.redact import shorten


class Verdict(StrEnum):
    """What an answer means for the events it carried (the ``outcome`` metric label)."""

    SUCCESS = "success"
    PARTIAL = "partial"
    RETRYABLE = "retryable"
    BAD_PAYLOAD = "bad_payload"
    FATAL = "fatal"


class RetryReason(StrEnum):
    """Why a request is retried (the ``reason`` label of the retries metric)."""

    TIMEOUT = "timeout"
    NETWORK = "network"
    HTTP_429 = "http_429"
    HTTP_5XX = "http_5xx"
    RATE_LIMITED = "rate_limited"
    SERVER = "server"
    INVALID_BODY = "invalid_body"


#: Token and permission codes: nothing can be delivered until the token changes.
FATAL_CODES: Final = frozenset({40001, 40102, 40104, 40105})
#: "Too many requests" (40100) and "request frequency limited" (40132).
RATE_LIMIT_CODES: Final = frozenset({40100, 40132})
#: Codes the ``code`` metric label names as themselves; any other is ``other``, so a
#: misbehaving server cannot grow the label set without bound.
KNOWN_CODES: Final = frozenset(
    {0, 20001, 40000, 40001, 40002, 40061, 40062, 40100, 40102, 40104, 40105, 40132}
    | {50000, 50002, 60001, 61000}
    | set(range(51000, 52000))
)
PARTIAL_OK: Final = 20001

#: Longest TikTok message kept in a reason (the reason becomes a dead-letter header).
MAX_MESSAGE_CHARS: Final = 500

_DATA_INDEX = re.compile(r"\bdata\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Classification:
    """One answer, classified.

    ``code`` is the bounded ``code`` metric label (``"40002"``, ``"http_503"``,
    ``"timeout"``, ``"network"``, ``"invalid_body"``, ``"other"``);
    ``reason`` says what happened for people and dead letters (``"40002 Invalid value
    for data[3].event_id: …"``, ``"HTTP 503"``). ``retry_after`` is the server's
    ``Retry-After`` in seconds, when it sent one with a retryable answer.
    """

    verdict: Verdict
    code: str
    reason: str
    retry_reason: RetryReason | None = None
    retry_after: float | None = None
    tiktok_code: int | None = None
    status: int | None = None

    @property
    def delivered(self) -> bool:
        """TikTok took the events (code 0, or 20001 partial success)."""
        return self.verdict in (Verdict.SUCCESS, Verdict.PARTIAL)

    def event_index(self) -> int | None:
        """The ``data[i]`` a bad-payload message names, if it names one (TikTok's messages
        and the sandbox's do: ``Invalid value for data[3].event_id``)."""
        match = _DATA_INDEX.search(self.reason)
        return int(match.group(1)) if match else None


def classify(
    status: int | None,
    body: bytes | None,
    exc: Exception | None,
    *,
    retry_after: str | None = None,
    secrets: Sequence[str] = (),
) -> Classification:
    """Classify a response (``status``, ``body`` and its ``Retry-After`` header) or the
    exception a request raised instead (``exc``; then status and body are ignored).
    ``secrets`` (the access token) are redacted from TikTok's message before it is
    shortened into the reason.

    ===========================================  ==============================
    answer                                       verdict
    ===========================================  ==============================
    code 0                                       success
    code 20001                                   partial (success)
    code 40100, 40132                            retryable (rate_limited)
    code 50000, 50002, 51xxx, 60001, 61000,      retryable (server)
    any other 5xxxx/6xxxx
    code 40001, 40102, 40104, 40105              fatal
    code 40000, 40002, 40061, 40062, any other   bad payload
    4xxxx
    any other non-zero code                      retryable (server)
    2xx without the JSON envelope                retryable (invalid_body)
    HTTP 408 / 429 / 5xx (no error envelope)     retryable (timeout/http_429/http_5xx)
    HTTP 400, 413, 422                           bad payload
    HTTP 401, 403, 404, other 4xx, 1xx, 3xx      fatal (token, permission or endpoint)
    timeout (httpx or asyncio)                   retryable (timeout)
    connection refused/reset/dropped, other      retryable (network)
    transport and OS errors, anything unknown
    httpx.UnsupportedProtocol                    fatal (the endpoint is not http(s))
    ===========================================  ==============================

    A non-2xx response whose body is an envelope with a non-zero code is judged by that
    code (it is the more specific answer). Unknown codes outside 4xxxx are retried rather
    than dead-lettered: the retries are bounded and the give-up reason keeps the code.
    """
    if exc is not None:
        return _classify_exception(exc)
    if status is None:
        raise ValueError("classify needs a status or an exception")
    wait = parse_retry_after(retry_after)
    envelope = _envelope(body)
    if envelope is not None and (_is_2xx(status) or envelope[0] != 0):
        code, message = envelope
        # Redacted before the cut: cutting first could split the token out of sight.
        text = shorten(message.strip(), MAX_MESSAGE_CHARS, secrets)
        return _classify_code(code, text, status, wait)
    return _classify_status(status, wait)


def renumber_events(text: str, places: Sequence[int]) -> str:
    """``text`` with every ``data[i]`` turned into ``data[places[i]]``: a message about
    the request that carried some events of a batch, in the numbering of the whole batch
    (``places[i]`` is where the request's i-th event sits in it). An index the request
    did not have is left as it is."""

    def renumbered(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"data[{places[index]}]" if index < len(places) else match.group(0)

    return _DATA_INDEX.sub(renumbered, text)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (the delta-seconds form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def code_label(code: int) -> str:
    return str(code) if code in KNOWN_CODES else "other"


def _is_2xx(status: int) -> bool:
    return 200 <= status < 300


def _envelope(body: bytes | None) -> tuple[int, str] | None:
    """(code, message) of TikTok's envelope, or None when the body is not one."""
    if not body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    code = doc.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    message = doc.get("message")
    return code, message if isinstance(message, str) else ""


def _classify_code(code: int, text: str, status: int, wait: float | None) -> Classification:
    """``text``: TikTok's message, already redacted and shortened."""
    reason = f"{code} {text}" if text else str(code)
    label = code_label(code)

    def answer(verdict: Verdict, why: RetryReason | None = None) -> Classification:
        after = wait if verdict is Verdict.RETRYABLE else None
        return Classification(verdict, label, reason, why, after, code, status)

    if code == 0:
        return answer(Verdict.SUCCESS)
    if code == PARTIAL_OK:
        return answer(Verdict.PARTIAL)
    if code in FATAL_CODES:
        return answer(Verdict.FATAL)
    if code in RATE_LIMIT_CODES:
        return answer(Verdict.RETRYABLE, RetryReason.RATE_LIMITED)
    if 40000 <= code <= 49999:
        # Every other 4xxxx says the request itself is wrong: bisect, dead-letter the bad.
        return answer(Verdict.BAD_PAYLOAD)
    # 5xxxx/6xxxx are TikTok's own trouble (system, timeout, downstream, maintenance,
    # overload). A code of no known family is retried too: bounded, and cheaper than
    # bisecting a batch that may be perfectly good.
    return answer(Verdict.RETRYABLE, RetryReason.SERVER)


def _classify_status(status: int, wait: float | None) -> Classification:
    label = f"http_{status}"
    reason = f"HTTP {status}"

    def retry(why: RetryReason, label: str = label, reason: str = reason) -> Classification:
        return Classification(Verdict.RETRYABLE, label, reason, why, wait, status=status)

    if _is_2xx(status):
        # A proxy or a half-broken gateway; TikTok itself always sends the envelope.
        return retry(RetryReason.INVALID_BODY, "invalid_body", f"{reason} without the envelope")
    if status == 408:
        return retry(RetryReason.TIMEOUT)
    if status == 429:
        return retry(RetryReason.HTTP_429)
    if 500 <= status <= 599:
        return retry(RetryReason.HTTP_5XX)
    if status in (400, 413, 422):
        # Malformed or too large: smaller halves may pass, so bisect like a 40002.
        return Classification(Verdict.BAD_PAYLOAD, label, reason, status=status)
    # 401/403: the token or its permissions; 404/405/3xx: the endpoint is wrong. None can
    # succeed by retrying or by dropping events, so stop and alert (nothing is lost).
    return Classification(Verdict.FATAL, label, f"{reason}: {_fatal_hint(status)}", status=status)


def _fatal_hint(status: int) -> str:
    if status in (401, 403):
        return "the access token was refused"
    return "check tiktok.endpoint"


def _classify_exception(exc: Exception) -> Classification:
    kind = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return Classification(
            Verdict.RETRYABLE, "timeout", f"timeout ({kind})", RetryReason.TIMEOUT
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Classification(
            Verdict.FATAL, "network", f"cannot send ({kind}): check tiktok.endpoint"
        )
    if isinstance(exc, httpx.DecodingError):
        return Classification(
            Verdict.RETRYABLE, "invalid_body", f"undecodable answer ({kind})",
            RetryReason.INVALID_BODY,
        )  # fmt: skip
    # Refused, reset, dropped without an answer (RemoteProtocolError), TLS and OS errors.
    # Anything not named above is retried as well: bounded, and the reason names its type.
    return Classification(
        Verdict.RETRYABLE, "network", f"network error ({kind})", RetryReason.NETWORK
    )
