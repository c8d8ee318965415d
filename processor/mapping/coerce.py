"""Coercing mapped values into the types TikTok expects, chosen by target field.

Users name *where* a value goes; the target decides *what* it must become, so a
mapping never has to spell out conversions: ``event_time`` becomes Unix seconds
from ISO-8601 or epoch ms/s, ids become strings (TikTok answers 40002 "not a
valid string" for numeric ids), money becomes a non-negative number, currency is
upper-cased and checked against ISO 4217, email, phone, external_id, first and last
name and zip code are normalised and SHA-256 hashed, and city, state, country and the
click ids are normalised (:mod:`processor.pii` has every rule). A coercer raises
:class:`CoerceError` whose message never contains the value.

Numbers that became text must keep every digit: orjson returns integers from
-2**63 to 2**64-1 as exact ``int``, but larger ones (and anything written with a
fraction or an exponent) as ``float``, which is exact only below 2**53. Two ids
2**64+1 and 2**64+2 would both become ``"18446744073709551616"``, and TikTok,
deduplicating on event and event_id, would drop one conversion; so such a float
is refused (:func:`exact_float_text`) instead of rounded.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any, Final

from processor import pii
from processor.schemas import tiktok_request_schema

Coercer = Callable[[Any], Any]

#: 2000-01-01 and 2100-01-01: anything outside is a broken clock or a unit mix-up.
MIN_EVENT_TIME: Final = 946_684_800
MAX_EVENT_TIME: Final = 4_102_444_800
#: Epoch numbers above this are milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD: Final = 100_000_000_000
#: Epoch microseconds (GA4's ``timestamp_micros``) from here: epoch ms of the year 5138.
_US_THRESHOLD: Final = 100_000_000_000_000
#: From here up a double no longer holds every integer (2**53 + 1 rounds to 2**53).
EXACT_FLOAT_LIMIT: Final = 2**53


class CoerceError(ValueError):
    """A value that cannot become what its target needs. Never carries the value."""


#: Why a customer-information value was left out of an event (the ``reason`` label of
#: ``identifiers_dropped_total``); the full reason goes to the preview and the logs.
DROP_REASONS: Final = ("empty", "too_long", "wrong_type", "partial_list", "invalid")


def drop_reason(message: str) -> str:
    """The :data:`DROP_REASONS` label of a coercion error's message."""
    if "values left out" in message:
        return "partial_list"
    if message.startswith("empty") or " empty" in message:
        return "empty"
    if "too long" in message or "too large" in message:
        return "too_long"
    if "expected " in message:
        return "wrong_type"
    return "invalid"


class PartialValue(CoerceError):
    """Part of a value could not be coerced: ``kept`` is what could (a list's valid
    members), the message says what was left out. A droppable field sends ``kept``."""

    def __init__(self, kept: Any, message: str) -> None:
        super().__init__(message)
        self.kept = kept


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), "a value")


def exact_float_text(value: float) -> str:
    """``str(value)``, unless the float may be a rounded integer (see the module docstring)."""
    if abs(value) >= EXACT_FLOAT_LIMIT:
        raise CoerceError("number too large to be exact; send it as a string")
    return str(value)


def to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value.__class__ is int:
        return str(value)
    if value.__class__ is float:
        return exact_float_text(value)
    raise CoerceError(f"expected text, got {_kind(value)}")


def to_id(value: Any) -> str:
    """Ids are strings for TikTok; integral numbers are accepted and converted, as long
    as every digit is known (an ``int``, or a float below 2**53)."""
    if isinstance(value, str):
        text = value.strip()
        if text:
            return text
        raise CoerceError("empty id")
    if value.__class__ is int:
        return str(value)
    if value.__class__ is float and value.is_integer():
        if abs(value) >= EXACT_FLOAT_LIMIT:
            raise CoerceError("integer too large to be exact; send ids as strings")
        return str(int(value))
    raise CoerceError(f"expected an id (text or integer), got {_kind(value)}")


def to_number(value: Any) -> float | int:
    """A non-negative finite number; numeric strings such as ``"49.99"`` are accepted."""
    number: float | int
    if value.__class__ in (int, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise CoerceError("not a number") from None
    else:
        raise CoerceError(f"expected a number, got {_kind(value)}")
    if not math.isfinite(number) or number < 0:
        raise CoerceError("must be a finite number ≥ 0")
    return number


def to_count(value: Any) -> int:
    number = to_number(value)
    if isinstance(number, float):
        if not number.is_integer():
            raise CoerceError("must be a whole number")
        return int(number)
    return number


def to_bool(value: Any) -> bool:
    if value.__class__ is bool:
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise CoerceError(f"expected true or false, got {_kind(value)}")


@cache
def currencies() -> frozenset[str]:
    """ISO 4217 codes, read from the TikTok schema so there is one list."""
    return frozenset(tiktok_request_schema()["definitions"]["currency"]["enum"])


def to_currency(value: Any) -> str:
    if not isinstance(value, str):
        raise CoerceError(f"expected an ISO 4217 code, got {_kind(value)}")
    code = value.strip().upper()
    if code not in currencies():
        raise CoerceError("not an ISO 4217 currency code")
    return code


def to_content_type(value: Any) -> str:
    text = to_text(value).strip().lower()
    if text not in ("product", "product_group"):
        raise CoerceError("must be product or product_group")
    return text


def to_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise CoerceError(f"expected an IP address, got {_kind(value)}")
    text = value.strip()
    # inet_pton is the C parser: ~10x faster than the ipaddress module on the hot path.
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        raise CoerceError("not an IPv4 or IPv6 address") from None
    return text


def to_epoch_seconds(value: Any) -> int:
    """ISO-8601 (offset or ``Z``; naive means UTC), epoch seconds, ms or µs → Unix seconds."""
    if value.__class__ in (int, float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        # ISO dates have "-" at [4]; checking first spares a float() that raises (slow).
        if len(text) >= 10 and text[4] == "-":
            number = _iso_seconds(text)
        else:
            try:
                number = float(text)
            except ValueError:
                raise CoerceError("not an ISO-8601 time or an epoch number") from None
    else:
        raise CoerceError(f"expected a time, got {_kind(value)}")
    if not math.isfinite(number):
        raise CoerceError("not a finite time")
    if number > _US_THRESHOLD:
        number /= 1_000_000.0
    elif number > _MS_THRESHOLD:
        number /= 1000.0
    seconds = int(number)
    if not MIN_EVENT_TIME <= seconds <= MAX_EVENT_TIME:
        raise CoerceError("time outside 2000 to 2100: a broken clock or a unit mix-up")
    return seconds


def _iso_seconds(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CoerceError("not an ISO-8601 time or an epoch number") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _hashed(hash_one: Callable[[str], str]) -> Coercer:
    """Text (or an integer) hashed; a list keeps its members that hash and raises
    :class:`PartialValue` naming the others (:class:`CoerceError` when none does)."""

    def coerce(value: Any) -> str | list[str]:
        if isinstance(value, str):
            try:
                return hash_one(value)
            except pii.PiiError as exc:
                raise CoerceError(str(exc)) from None
        if value.__class__ is int:
            try:
                return hash_one(str(value))
            except pii.PiiError as exc:
                raise CoerceError(str(exc)) from None
        if isinstance(value, list) and value:
            return _hashed_list(hash_one, value)
        raise CoerceError(f"expected text or a list of text, got {_kind(value)}")

    return coerce


def _hashed_list(hash_one: Callable[[str], str], values: list[Any]) -> list[str]:
    kept: list[str] = []
    reasons: list[str] = []
    for item in values:
        try:
            if not isinstance(item, str):
                raise CoerceError(f"expected text, got {_kind(item)}")
            kept.append(hash_one(item))
        except (pii.PiiError, CoerceError) as exc:
            reasons.append(str(exc))
    if not reasons:
        return kept
    first = reasons[0]
    if not kept:
        raise CoerceError(first if len(values) == 1 else f"no valid value in the list: {first}")
    raise PartialValue(kept, f"{len(reasons)} of {len(values)} values left out: {first}")


def to_id_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return [to_id(value)]
    return [to_id(v) for v in value]


def pii_coercers(default_phone_region: str | None) -> dict[str, Coercer]:
    """Coercers of the hashed user fields (:data:`HASHED_USER_FIELDS`)."""
    return {
        "email": _hashed(pii.hash_email),
        "phone": _hashed(pii.phone_hasher(default_phone_region)),
        "external_id": _hashed(pii.hash_external_id),
        "first_name": _hashed(pii.hash_first_name),
        "last_name": _hashed(pii.hash_last_name),
        "zip_code": _hashed(pii.hash_zip_code),
    }


def _normalised(normalise: Callable[[str], str]) -> Coercer:
    """Text normalised by a :mod:`processor.pii` rule and sent as it is, not hashed."""

    def coerce(value: Any) -> str:
        if not isinstance(value, str):
            raise CoerceError(f"expected text, got {_kind(value)}")
        try:
            return normalise(value)
        except pii.PiiError as exc:
            raise CoerceError(str(exc)) from None

    return coerce


#: Coercer of every mappable field below ``user``/``page``/``properties``/``lead``,
#: and of the fields of one ``contents[]`` item. Hashed user fields come from
#: :func:`pii_coercers` because they depend on configuration.
SECTION_FIELDS: Final[dict[str, dict[str, Coercer]]] = {
    "user": {
        "ip": to_ip,
        "user_agent": to_text,
        "ttclid": _normalised(pii.normalize_click_id),
        "ttp": _normalised(pii.normalize_click_id),
        "locale": to_text,
        "city": _normalised(pii.normalize_city),
        "state": _normalised(pii.normalize_state),
        "country": _normalised(pii.normalize_country),
        # App events only (event_source app); sent as given, never hashed.
        "idfa": to_text,
        "idfv": to_text,
        "gaid": to_text,
        "att_status": to_text,
    },
    "page": {"url": to_text, "referrer": to_text},
    "properties": {
        "value": to_number,
        "currency": to_currency,
        "content_type": to_content_type,
        "content_ids": to_id_list,
        "num_items": to_count,
        "search_string": to_text,
        "query": to_text,
        "description": to_text,
        "order_id": to_id,
        "shop_id": to_id,
    },
    "lead": {"lead_id": to_id, "lead_event_source": to_text},
}

CONTENT_FIELDS: Final[dict[str, Coercer]] = {
    "content_id": to_id,
    "content_name": to_text,
    "content_category": to_text,
    "price": to_number,
    "quantity": to_count,
    "brand": to_text,
}

HASHED_USER_FIELDS: Final = ("email", "phone", "external_id", "first_name", "last_name", "zip_code")
