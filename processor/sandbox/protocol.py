"""TikTok's side of the wire, as the sandbox speaks it: path, codes, messages, envelope.

Owns the constants a client sees: the track path, TikTok's response codes with the
messages the sandbox answers them with, the ``{code, message, request_id, data}``
envelope, and request ids. TikTok answers API-level errors as HTTP 200 with a
non-zero ``code``; only the HTTP faults the sandbox injects use other statuses.
"""

from __future__ import annotations

import itertools
import threading
import time
from enum import IntEnum
from http import HTTPStatus

import orjson

#: The Events API 2.0 endpoint path (2.0 still lives under API version v1.3).
TRACK_PATH = "/open_api/v1.3/event/track/"

#: Most events one request may carry; more and TikTok rejects the whole request.
MAX_BATCH_EVENTS = 1000


class Code(IntEnum):
    """TikTok Business API response codes the sandbox answers (SDK ``tiktok_code.py``)."""

    OK = 0
    PARTIAL_OK = 20001
    INVALID_PARAMS = 40000
    NO_PERMISSION = 40001
    PARAM_ERROR = 40002
    INVALID_BATCH_SIZE = 40061
    PII_NOT_HASHED = 40062
    TOO_MANY_REQUESTS = 40100
    TOKEN_EXPIRED = 40102
    TOKEN_EMPTY = 40104
    TOKEN_INVALID = 40105
    FREQUENCY_LIMITED = 40132
    SYSTEM_ERROR = 50000
    SYSTEM_TIMEOUT = 50002
    DOWNSTREAM_ERROR = 51000
    MAINTENANCE = 60001
    OVERLOADED = 61000


_MESSAGES: dict[int, str] = {
    Code.OK: "OK",
    Code.PARTIAL_OK: "Partial OK",
    Code.INVALID_PARAMS: "Invalid parameters",
    Code.NO_PERMISSION: "No permission to operate pixel code",
    Code.PARAM_ERROR: "Invalid value for a parameter",
    Code.INVALID_BATCH_SIZE: "Invalid batch size",
    Code.PII_NOT_HASHED: "PII not hashed",
    Code.TOO_MANY_REQUESTS: "Too many requests. Please retry in some time.",
    Code.TOKEN_EXPIRED: "Access token has expired",
    Code.TOKEN_EMPTY: "Access token is empty",
    Code.TOKEN_INVALID: "Access token is incorrect or has been revoked",
    Code.FREQUENCY_LIMITED: "Request frequency limited",
    Code.SYSTEM_ERROR: "System error",
    Code.SYSTEM_TIMEOUT: "System timeout",
    Code.DOWNSTREAM_ERROR: "Downstream service error",
    Code.MAINTENANCE: "Service under maintenance",
    Code.OVERLOADED: "Too many requests, the service is overloaded",
}


def is_downstream_code(code: int) -> bool:
    """TikTok's 51xxx family: errors of a service behind the API (retryable)."""
    return 51000 <= code <= 51999


def is_known_code(code: int) -> bool:
    """A code the sandbox knows how to answer (and so may inject)."""
    return code in _MESSAGES or is_downstream_code(code)


def default_message(code: int) -> str:
    """The message the sandbox sends with ``code`` when it has nothing more specific."""
    if code in _MESSAGES:
        return _MESSAGES[code]
    return _MESSAGES[Code.DOWNSTREAM_ERROR] if is_downstream_code(code) else "Error"


def envelope(code: int, message: str, request_id: str) -> bytes:
    """TikTok's response body. ``data`` is an empty object: what TikTok puts there is
    unconfirmed, so clients must not depend on it."""
    return orjson.dumps({"code": code, "message": message, "request_id": request_id, "data": {}})


def reason_phrase(status: int) -> str:
    """``503`` → ``Service Unavailable``."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class RequestIds:
    """TikTok-looking request ids (``20260101120000`` + a counter), unique per sandbox."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._counter)
        return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + f"{n:010X}"
