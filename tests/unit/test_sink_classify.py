"""How one answer from TikTok is classified (``processor.sink.classify``): the code in
the body of a 200, HTTP statuses without an envelope, 2xx bodies that are not the
envelope, transport exceptions, Retry-After, the processor's own error each verdict
gives, a code label set that unknown codes do not grow, and the event index a
bad-payload reason names. Pure: no sender, no transport.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from processor.sink import RetryReason, Verdict, classify
from tests.unit.sinkkit import TOKEN

# -- classification: the table in docs/ARCHITECTURE.md (classification of TikTok's answers) --

R = Verdict.RETRYABLE
BAD = Verdict.BAD_PAYLOAD
FATAL = Verdict.FATAL


@pytest.mark.parametrize(
    ("code", "verdict", "reason"),
    [
        (0, Verdict.SUCCESS, None),
        (20001, Verdict.PARTIAL, None),
        (40100, R, RetryReason.RATE_LIMITED),
        (40132, R, RetryReason.RATE_LIMITED),
        (50000, R, RetryReason.SERVER),
        (50002, R, RetryReason.SERVER),
        (51000, R, RetryReason.SERVER),
        (51234, R, RetryReason.SERVER),
        (60001, R, RetryReason.SERVER),
        (61000, R, RetryReason.SERVER),
        (40000, BAD, None),
        (40002, BAD, None),
        (40061, BAD, None),
        (40062, BAD, None),
        (40999, BAD, None),  # an unknown 4xxxx: the request is wrong
        (40001, FATAL, None),
        (40102, FATAL, None),
        (40104, FATAL, None),
        (40105, FATAL, None),
        (12345, R, RetryReason.SERVER),  # no known family: retried, bounded
    ],
)
def test_every_tiktok_code_is_classified_from_the_body_of_a_200(
    code: int, verdict: Verdict, reason: RetryReason | None
) -> None:
    body = orjson.dumps({"code": code, "message": "Some message", "request_id": "r1"})
    result = classify(200, body, None)
    assert result.verdict is verdict
    assert result.retry_reason is reason
    assert result.tiktok_code == code
    assert result.reason == f"{code} Some message"
    assert result.code in (str(code), "other")


@pytest.mark.parametrize(
    ("status", "verdict", "reason", "label"),
    [
        (408, R, RetryReason.TIMEOUT, "http_408"),
        (429, R, RetryReason.HTTP_429, "http_429"),
        (500, R, RetryReason.HTTP_5XX, "http_500"),
        (502, R, RetryReason.HTTP_5XX, "http_502"),
        (503, R, RetryReason.HTTP_5XX, "http_503"),
        (504, R, RetryReason.HTTP_5XX, "http_504"),
        (400, BAD, None, "http_400"),
        (413, BAD, None, "http_413"),
        (422, BAD, None, "http_422"),
        (401, FATAL, None, "http_401"),
        (403, FATAL, None, "http_403"),
        (404, FATAL, None, "http_404"),
        (405, FATAL, None, "http_405"),
        (301, FATAL, None, "http_301"),
    ],
)
def test_http_statuses_without_an_envelope_are_classified_by_status(
    status: int, verdict: Verdict, reason: RetryReason | None, label: str
) -> None:
    result = classify(status, b"<html>gateway says no</html>", None)
    assert (result.verdict, result.retry_reason, result.code) == (verdict, reason, label)
    assert result.status == status
    assert "gateway" not in result.reason


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'{"message": "no code"}', b'{"code": "0"}', b'{"code": true}'],
)
@pytest.mark.parametrize("status", [200, 204])
def test_a_2xx_without_the_envelope_is_retryable_invalid_body(status: int, body: bytes) -> None:
    result = classify(status, body, None)
    assert (result.verdict, result.retry_reason, result.code) == (
        R,
        RetryReason.INVALID_BODY,
        "invalid_body",
    )


def test_the_body_code_wins_over_an_error_status() -> None:
    body = orjson.dumps({"code": 40002, "message": "Invalid value for data[3].event_id"})
    assert classify(503, body, None).verdict is BAD
    # ... but an envelope saying 0 does not turn a 503 into a success.
    assert classify(503, orjson.dumps({"code": 0}), None).verdict is R


@pytest.mark.parametrize(
    ("exc", "verdict", "label"),
    [
        (httpx.ConnectTimeout("t"), R, "timeout"),
        (httpx.ReadTimeout("t"), R, "timeout"),
        (httpx.WriteTimeout("t"), R, "timeout"),
        (httpx.PoolTimeout("t"), R, "timeout"),
        (TimeoutError(), R, "timeout"),
        (httpx.ConnectError("refused"), R, "network"),
        (httpx.ReadError("reset"), R, "network"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            R,
            "network",
        ),
        (ConnectionResetError(), R, "network"),
        (httpx.DecodingError("bad gzip"), R, "invalid_body"),
        (httpx.UnsupportedProtocol("ftp"), FATAL, "network"),
    ],
)
def test_transport_exceptions_are_classified(exc: Exception, verdict: Verdict, label: str) -> None:
    result = classify(None, None, exc)
    assert (result.verdict, result.code) == (verdict, label)
    assert type(exc).__name__ in result.reason


def test_exception_messages_are_never_copied_into_the_reason() -> None:
    # HTTP libraries quote header values in some errors: the token must not ride along.
    result = classify(None, None, httpx.LocalProtocolError(f"Illegal header value {TOKEN!r}"))
    assert TOKEN not in result.reason
    assert result.verdict is R


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1.5", 1.5), (" 2 ", 2.0), ("-1", None), ("soon", None), ("nan", None)],
)
def test_retry_after_seconds_are_read_from_429_and_503(header: str, expected: float | None) -> None:
    assert classify(429, b"", None, retry_after=header).retry_after == expected
    assert classify(503, b"", None, retry_after=header).retry_after == expected
    assert classify(400, b"", None, retry_after=header).retry_after is None


def test_unknown_codes_do_not_grow_the_code_label_set() -> None:
    assert classify(200, orjson.dumps({"code": 47474}), None).code == "other"
    assert classify(200, orjson.dumps({"code": 51007}), None).code == "51007"


def test_a_bad_payload_reason_names_the_event_index() -> None:
    body = orjson.dumps({"code": 40002, "message": "Invalid value for data[12].event_id: x"})
    assert classify(200, body, None).event_index() == 12
    assert (
        classify(200, orjson.dumps({"code": 40002, "message": "bad"}), None).event_index() is None
    )
