"""Normalising and hashing customer information exactly as TikTok requires.

TikTok matches ``email``, ``phone`` and ``external_id`` by the SHA-256 of their
normalised form (lowercase hex), so two spellings of one address must hash the
same and a raw value must never leave the process:

- email: trimmed and lower-cased (``" ALICE_abc@gmail.com "`` → ``alice_abc@gmail.com``);
- phone: E.164 *with* the ``+`` and country code, no spaces, brackets or trunk 0
  (``"(+1)2133734253"`` → ``+12133734253``); numbers without a country code get
  the configured default region; parsing uses Google's libphonenumber rules;
- external_id: trimmed (TikTok states no further normalisation);
- a value that already is 64 hex characters is taken as a SHA-256 and passes
  through (lower-cased), so upstream hashing is never hashed twice.

``ip``, ``user_agent``, ``ttclid``, ``ttp`` and ``locale`` are never hashed.

Every function raises :class:`PiiError` with a message that never contains the
value itself.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import phonenumbers

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Deliberately permissive (TikTok normalises, it does not verify): one @, no
# spaces, a dot in the domain. Real validation is the mailbox's business.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_MAX_EMAIL = 254
_MAX_EXTERNAL_ID = 512
_MAX_PHONE_INPUT = 40


class PiiError(ValueError):
    """A customer-information value cannot be normalised. The message omits the value."""


def is_sha256_hex(value: str) -> bool:
    """True when ``value`` already is a SHA-256 digest in hex (any case)."""
    return len(value) == 64 and _SHA256_HEX.fullmatch(value) is not None


def sha256_hex(value: str) -> str:
    """SHA-256 of the UTF-8 bytes of ``value``, lowercase hex."""
    return hashlib.sha256(value.encode()).hexdigest()


def normalize_email(value: str) -> str:
    """Trim and lower-case; reject what cannot be an address."""
    email = value.strip().lower()
    if not email:
        raise PiiError("empty email address")
    if len(email) > _MAX_EMAIL or _EMAIL.fullmatch(email) is None:
        raise PiiError("not a valid email address")
    return email


def normalize_phone(value: str, default_region: str | None = None) -> str:
    """E.164 with the leading ``+``.

    ``default_region`` (ISO 3166 alpha-2, e.g. ``"US"``) applies to numbers
    written without a country code; without it such numbers are rejected.
    """
    raw = value.strip()
    if not raw:
        raise PiiError("empty phone number")
    if len(raw) > _MAX_PHONE_INPUT:
        raise PiiError("phone number too long")
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        reason = {
            phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: (
                "phone number has no valid country code (set pii.default_phone_region "
                "for national numbers)"
            ),
            phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
            phonenumbers.NumberParseException.TOO_SHORT_NSN: "phone number too short",
            phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "phone number too short",
            phonenumbers.NumberParseException.TOO_LONG: "phone number too long",
        }.get(exc.error_type, "not a phone number")
        raise PiiError(reason) from None
    # "Possible" (right length for the country), not "valid": ranges reserved
    # for fiction and new allocations are still real customers' numbers to TikTok.
    if not phonenumbers.is_possible_number(number):
        raise PiiError("not a possible phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_external_id(value: str) -> str:
    """Trim; reject empty and absurdly long ids."""
    external_id = value.strip()
    if not external_id:
        raise PiiError("empty external_id")
    if len(external_id) > _MAX_EXTERNAL_ID:
        raise PiiError("external_id too long")
    return external_id


# Visitors come back many times a session: caching the three hashers makes a
# returning visitor's PII cost a dict lookup. Bounded; holds nothing that the
# records in flight do not hold already.
_HASH_CACHE_SIZE = 65_536


@lru_cache(maxsize=_HASH_CACHE_SIZE)
def hash_email(value: str) -> str:
    """The value TikTok expects in ``user.email``."""
    if is_sha256_hex(value):
        return value.lower()
    return sha256_hex(normalize_email(value))


@lru_cache(maxsize=_HASH_CACHE_SIZE)
def hash_phone(value: str, default_region: str | None = None) -> str:
    """The value TikTok expects in ``user.phone``."""
    if is_sha256_hex(value):
        return value.lower()
    return sha256_hex(normalize_phone(value, default_region))


@lru_cache(maxsize=_HASH_CACHE_SIZE)
def hash_external_id(value: str) -> str:
    """The value TikTok expects in ``user.external_id``."""
    if is_sha256_hex(value):
        return value.lower()
    return sha256_hex(normalize_external_id(value))
