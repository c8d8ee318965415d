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

The three hashers remember recent digests in caches bounded by the bytes they hold
(:data:`HASH_CACHE_BYTES` in all), keyed on the *trimmed* value, so a value padded with
megabytes of spaces costs a trim and is never kept (:func:`cache_info`).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

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
# returning visitor's PII cost a trim and a dict lookup. The bound is in bytes, not
# entries, because entries are as long as the values are: 65,536 entries keyed on raw
# values held 900 MB for 300 records padded to 3 MB each.
#
# Every cache is keyed on the trimmed value. That is sound because all a hasher does
# after its pre-hashed check is a function of the trimmed value (normalising starts by
# trimming), and stays so if that check moves after the trim or normalising does more;
# and it keeps padding out of the cache. Only digests of values that
# normalised are stored: an invalid value raises again each time, as it did before.
# The hashers test the length before calling is_sha256_hex: almost no value is 64
# characters long, and the call alone is a third of what a hit costs.

#: Bytes all three caches may hold together: keys, digests and the cache's own slots.
HASH_CACHE_BYTES: Final = 8 * 1024 * 1024
# Phone keys are 40 characters at most, so a quarter holds about as many phones as half
# holds emails; external ids get the rest.
_EMAIL_CACHE_BYTES: Final = HASH_CACHE_BYTES // 2
_PHONE_CACHE_BYTES: Final = HASH_CACHE_BYTES // 4
_EXTERNAL_ID_CACHE_BYTES: Final = HASH_CACHE_BYTES - _EMAIL_CACHE_BYTES - _PHONE_CACHE_BYTES
#: What an entry holds besides its key: the digest (a 64-character ASCII str) and the
#: OrderedDict's share (hash-table slot and list node). tracemalloc measured that share
#: at about 66 bytes in a table filled once and 135 under steady eviction (deleted
#: slots wait for the next resize); 160 keeps the count above what is really held.
_ENTRY_BYTES: Final = sys.getsizeof("0" * 64) + 160


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """What the hash caches hold: ``entries``, ``bytes`` (keys, digests and slots, as
    counted against the bound) and ``max_bytes`` (the bound)."""

    entries: int
    bytes: int
    max_bytes: int


class _DigestCache:
    """Least recently used digests, bounded by the bytes their keys and values hold.

    ``key_bytes`` gives the bytes a key holds (``sys.getsizeof`` for a str); each entry
    is charged that plus the digest and the cache's own slot. Lookups take no lock: each
    OrderedDict call is atomic, and a key evicted between the get and the move is just a
    hit that is not refreshed. Stores (misses only) take the lock, so the byte count
    stays exact with several threads hashing.
    """

    __slots__ = (
        "_bytes", "_entries", "_find", "_key_bytes", "_lock", "_max_bytes",
        "_max_entry_bytes", "_touch",
    )  # fmt: skip

    def __init__(self, max_bytes: int, key_bytes: Callable[[Any], int] = sys.getsizeof) -> None:
        self._entries: OrderedDict[Hashable, str] = OrderedDict()
        # Bound once: looking a method up on an OrderedDict costs more than the call.
        self._find = self._entries.get
        self._touch = self._entries.move_to_end
        self._key_bytes = key_bytes
        self._bytes = 0
        self._max_bytes = max_bytes
        # One entry never takes more than a small share, so no single value can flush
        # the cache (valid values are far below this anyway).
        self._max_entry_bytes = max_bytes // 64
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        digest = self._find(key)
        if digest is not None:
            # Not contextlib.suppress: a context manager would cost more than the lookup.
            try:  # noqa: SIM105
                self._touch(key)
            except KeyError:
                pass  # evicted by another thread meanwhile: the digest is still right
        return digest

    def put(self, key: Hashable, digest: str) -> None:
        size = self._key_bytes(key) + _ENTRY_BYTES
        if size > self._max_entry_bytes:
            return
        entries = self._entries
        # acquire/release rather than ``with``: half the cost, and this runs on every miss.
        self._lock.acquire()
        try:
            if key in entries:
                return  # another thread stored it first
            entries[key] = digest
            self._bytes += size
            while self._bytes > self._max_bytes:
                old_key, _ = entries.popitem(last=False)
                self._bytes -= self._key_bytes(old_key) + _ENTRY_BYTES
        finally:
            self._lock.release()

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(len(self._entries), self._bytes, self._max_bytes)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _phone_key_bytes(key: tuple[str, str | None]) -> int:
    # The region is a configured code the configuration holds anyway: not counted.
    return sys.getsizeof(key) + sys.getsizeof(key[0])


_EMAILS: Final = _DigestCache(_EMAIL_CACHE_BYTES)
_PHONES: Final = _DigestCache(_PHONE_CACHE_BYTES, _phone_key_bytes)
_EXTERNAL_IDS: Final = _DigestCache(_EXTERNAL_ID_CACHE_BYTES)
_CACHES: Final = (_EMAILS, _PHONES, _EXTERNAL_IDS)


def cache_info() -> CacheInfo:
    """What the three hash caches hold together (``bytes`` never exceeds ``max_bytes``)."""
    infos = [cache.info() for cache in _CACHES]
    return CacheInfo(
        sum(i.entries for i in infos), sum(i.bytes for i in infos), sum(i.max_bytes for i in infos)
    )


def cache_clear() -> None:
    """Empty the three hash caches."""
    for cache in _CACHES:
        cache.clear()


def hash_email(value: str) -> str:
    """The value TikTok expects in ``user.email``."""
    if len(value) == 64 and is_sha256_hex(value):
        return value.lower()
    key = value.strip()
    digest = _EMAILS.get(key)
    if digest is None:
        digest = sha256_hex(normalize_email(key))
        _EMAILS.put(key, digest)
    return digest


def hash_phone(value: str, default_region: str | None = None) -> str:
    """The value TikTok expects in ``user.phone``."""
    if len(value) == 64 and is_sha256_hex(value):
        return value.lower()
    key = (value.strip(), default_region)
    digest = _PHONES.get(key)
    if digest is None:
        digest = sha256_hex(normalize_phone(key[0], default_region))
        _PHONES.put(key, digest)
    return digest


def hash_external_id(value: str) -> str:
    """The value TikTok expects in ``user.external_id``."""
    if len(value) == 64 and is_sha256_hex(value):
        return value.lower()
    key = value.strip()
    digest = _EXTERNAL_IDS.get(key)
    if digest is None:
        digest = sha256_hex(normalize_external_id(key))
        _EXTERNAL_IDS.put(key, digest)
    return digest
