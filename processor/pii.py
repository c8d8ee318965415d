"""Normalising and hashing customer information exactly as TikTok requires.

TikTok matches ``email``, ``phone``, ``external_id``, ``first_name``, ``last_name``
and ``zip_code`` by the SHA-256 of their normalised form (lowercase hex), so two
spellings of one value must hash the same and a raw value must never leave the
process:

- email: format characters (Unicode category Cf: zero-width spaces and joiners,
  word joiner, byte-order mark, soft hyphen) removed, composed to NFC, trimmed and
  lower-cased (``" ALICE_abc@gmail.com "`` → ``alice_abc@gmail.com``);
- phone: E.164 *with* the ``+`` and country code, no spaces, brackets or trunk 0
  (``"(+1)2133734253"`` → ``+12133734253``); numbers without a country code get
  the configured default region; parsing uses Google's libphonenumber rules;
- external_id: trimmed (TikTok states no further normalisation);
- first_name, last_name: format characters removed, NFC, lower-cased, punctuation
  and symbols removed, white space collapsed (``" Jean-Paul  O'Brien "`` →
  ``jeanpaul obrien``), see :func:`normalize_name`;
- zip_code: lower-cased with all white space removed (``" SW1A 1AA "`` → ``sw1a1aa``);
- a value that already is 64 hex characters once trimmed is taken as a SHA-256 and
  passes through (lower-cased), so upstream hashing is never hashed twice.

``country`` (ISO 3166-1 alpha-2, lower-cased), ``city`` and ``state`` are normalised
but not hashed; ``ttclid`` and ``ttp`` are trimmed (a mapping's ``{from_url: …}`` finds a
``ttclid`` in a page URL: :func:`processor.mapping.values.url_param`); ``ip``,
``user_agent`` and ``locale`` are never hashed.

Every function raises :class:`PiiError` with a message that never contains the
value itself.

The hashers remember recent digests in caches bounded by the bytes they hold
(:data:`HASH_CACHE_BYTES` in all), keyed on the *trimmed* value, so a value padded with
megabytes of spaces costs a trim and is never kept (:func:`cache_info`).
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Final, Protocol

import phonenumbers

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Deliberately permissive (TikTok normalises, it does not verify): one @, no
# spaces, a dot in the domain. Real validation is the mailbox's business.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")
_MAX_EMAIL = 254
# Checked before invisible characters are removed, so that removing them from a
# pathological value costs little; a real address is far shorter.
_MAX_EMAIL_INPUT = 1024
_MAX_EXTERNAL_ID = 512
_MAX_PHONE_INPUT = 40
# Far above any real name, city or state; far below what would take long to normalise.
_MAX_NAME = 256
_MAX_ZIP_CODE = 32


class PiiError(ValueError):
    """A customer-information value cannot be normalised. The message omits the value."""


def is_sha256_hex(value: str) -> bool:
    """True when ``value`` already is a SHA-256 digest in hex (any case)."""
    return len(value) == 64 and _SHA256_HEX.fullmatch(value) is not None


def sha256_hex(value: str) -> str:
    """SHA-256 of the UTF-8 bytes of ``value``, lowercase hex."""
    return hashlib.sha256(value.encode()).hexdigest()


def _normal(value: str, field: str, max_length: int, form: Callable[[str], str]) -> str:
    """``form`` of the trimmed ``value``, refusing a value too long to be real and an
    empty result (``field`` names the value in the error)."""
    text = value.strip()
    if len(text) > max_length:
        raise PiiError(f"{field} too long")
    normal = form(text) if text else text
    if not normal:
        raise PiiError(f"empty {field}")
    return normal


def _visible_nfc(text: str) -> str:
    """``text`` without format characters (Unicode category Cf: zero-width space,
    non-joiner and joiner, word joiner, byte-order mark, soft hyphen, direction marks),
    then composed to NFC.

    The format characters go first: one between a letter and its combining accent would
    keep the two from composing (``"e\\u200b\\u0301"`` would not become ``"é"``).
    """
    if text.isascii():
        return text  # ASCII has no format characters and is its own NFC
    visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFC", visible)


def _email_form(text: str) -> str:
    return _visible_nfc(text).strip().lower()


def _name_form(text: str) -> str:
    lowered = _visible_nfc(text).lower()
    letters = "".join(c for c in lowered if unicodedata.category(c)[0] not in "PS")
    return " ".join(letters.split())


def _place_form(text: str) -> str:
    return " ".join(_visible_nfc(text).lower().split())


def _zip_code_form(text: str) -> str:
    return "".join(text.split()).lower()


def _unchanged(text: str) -> str:
    return text


def normalize_email(value: str) -> str:
    """Remove format characters (category Cf), compose to NFC, trim and lower-case;
    reject what cannot be an address."""
    email = _normal(value, "email address", _MAX_EMAIL_INPUT, _email_form)
    if len(email) > _MAX_EMAIL or _EMAIL.fullmatch(email) is None:
        raise PiiError("not a valid email address")
    return email


def normalize_phone(value: str, default_region: str | None = None) -> str:
    """E.164 with the leading ``+``.

    ``default_region`` (ISO 3166 alpha-2, e.g. ``"US"``) applies to numbers
    written without a country code; without it such numbers are rejected.
    """
    raw = _normal(value, "phone number", _MAX_PHONE_INPUT, _unchanged)
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
    return _normal(value, "external_id", _MAX_EXTERNAL_ID, _unchanged)


def normalize_first_name(value: str) -> str:
    """A first name as it is hashed, exactly: format characters (category Cf) removed;
    composed to NFC; lower-cased; punctuation and symbols (categories P* and S*:
    ``- ' . ,``, ``™``, emoji, ...) removed, not replaced; every run of white space
    made one space and white space at either end removed. Letters, combining marks and
    digits stay: ``" Jean-Paul  O'Brien "`` → ``jeanpaul obrien``. Empty (before or
    after that) and over 256 characters are refused."""
    return _normal(value, "first_name", _MAX_NAME, _name_form)


def normalize_last_name(value: str) -> str:
    """A last name as it is hashed: exactly as :func:`normalize_first_name`
    (``"  de la Cruz-Núñez "`` → ``de la cruznúñez``)."""
    return _normal(value, "last_name", _MAX_NAME, _name_form)


def normalize_zip_code(value: str) -> str:
    """A zip code as it is hashed: lower-cased, with every white space character
    removed (``" SW1A 1AA "`` → ``sw1a1aa``); empty and over 32 characters are refused.

    Hyphens and everything else stay: they are part of real formats (US ZIP+4
    ``12345-6789``, Portugal ``1000-001``, Japan ``100-0001``), and the rule TikTok
    integrations state is lower-case without spaces, nothing more.
    """
    return _normal(value, "zip_code", _MAX_ZIP_CODE, _zip_code_form)


def normalize_country(value: str) -> str:
    """ISO 3166-1 alpha-2, lower-cased (``" US "`` → ``us``); not hashed.

    The codes accepted are the regions libphonenumber knows
    (``phonenumbers.SUPPORTED_REGIONS``): every inhabited country, plus ``XK``
    (Kosovo), ``AC`` (Ascension) and ``TA`` (Tristan da Cunha); codes of places
    without telephone numbers of their own (``AQ``, ``BV``, ``HM``, ...) are refused.
    """
    code = value.strip()
    if not code:
        raise PiiError("empty country")
    # isascii: the long s (U+017F) upper-cases to "S", so it and "s" would pass for "SS".
    if len(code) != 2 or not code.isascii() or code.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise PiiError("country is not an ISO 3166-1 alpha-2 code")
    return code.lower()


def normalize_city(value: str) -> str:
    """A city as it is sent (not hashed), exactly: format characters (category Cf)
    removed; composed to NFC; lower-cased; every run of white space made one space and
    white space at either end removed. Punctuation stays (``" St.  Louis "`` →
    ``st. louis``). Empty and over 256 characters are refused."""
    return _normal(value, "city", _MAX_NAME, _place_form)


def normalize_state(value: str) -> str:
    """A state as it is sent (not hashed): exactly as :func:`normalize_city`
    (``" New  South Wales "`` → ``new south wales``, ``"CA"`` → ``ca``)."""
    return _normal(value, "state", _MAX_NAME, _place_form)


def normalize_click_id(value: str) -> str:
    """A ``ttclid`` or ``ttp`` as it is sent (not hashed): trimmed, case kept."""
    click_id = value.strip()
    if not click_id:
        raise PiiError("empty click id")
    return click_id


# Visitors come back many times a session: caching the hashers makes a returning
# visitor's PII cost a trim and a dict lookup. The bound is in bytes, not entries,
# because entries are as long as the values are: 65,536 entries keyed on raw values held
# 900 MB for 300 records padded to 3 MB each.
#
# Every cache is keyed on the trimmed value. That is sound because all a hasher does is
# a function of the trimmed value: it trims first, then tests for a digest, then
# normalises (and normalising starts by trimming, which changes nothing by then); and it
# keeps padding out of the cache. A phone's key also holds the default region, on which
# a national number's digest depends. Only digests of values that normalised are
# stored: an invalid value raises again each time, as it did before. The hashers test
# the trimmed value's length before calling is_sha256_hex: almost no value is 64
# characters long, and the call alone is a third of what a hit costs.
#
# Names and zip codes are cached too: they come in the same records as emails (a
# returning customer's checkout carries them all), and a name costs more to normalise
# than an email does (a Unicode category per character). First and last names share one
# cache: they are normalised alike, so a trimmed name has one digest whichever field it
# came in. Zip codes are normalised otherwise ("a b" is the name "a b" but the zip code
# "ab"), so they have their own.

#: Bytes all the caches may hold together: keys, digests and the caches' own slots.
HASH_CACHE_BYTES: Final = 8 * 1024 * 1024
# Phone keys are 40 characters at most, so a quarter holds about as many phones as half
# holds emails. Fewer mappings send external ids, names and zip codes: an eighth for the
# ids, a sixteenth each for names and zip codes (short keys: thousands of entries).
_EMAIL_CACHE_BYTES: Final = HASH_CACHE_BYTES // 2
_PHONE_CACHE_BYTES: Final = HASH_CACHE_BYTES // 4
_EXTERNAL_ID_CACHE_BYTES: Final = HASH_CACHE_BYTES // 8
_NAME_CACHE_BYTES: Final = HASH_CACHE_BYTES // 16
_ZIP_CODE_CACHE_BYTES: Final = HASH_CACHE_BYTES - (
    _EMAIL_CACHE_BYTES + _PHONE_CACHE_BYTES + _EXTERNAL_ID_CACHE_BYTES + _NAME_CACHE_BYTES
)
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
_NAMES: Final = _DigestCache(_NAME_CACHE_BYTES)
_ZIP_CODES: Final = _DigestCache(_ZIP_CODE_CACHE_BYTES)
_CACHES: Final = (_EMAILS, _PHONES, _EXTERNAL_IDS, _NAMES, _ZIP_CODES)


def cache_info() -> CacheInfo:
    """What the hash caches hold together (``bytes`` never exceeds ``max_bytes``)."""
    infos = [cache.info() for cache in _CACHES]
    return CacheInfo(
        sum(i.entries for i in infos), sum(i.bytes for i in infos), sum(i.max_bytes for i in infos)
    )


def cache_clear() -> None:
    """Empty the hash caches."""
    for cache in _CACHES:
        cache.clear()


class _Cache(Protocol):
    """What a hasher needs of its cache."""

    def get(self, key: str, /) -> str | None: ...

    def put(self, key: str, digest: str, /) -> None: ...


class _RegionalPhones:
    """The phone cache as the hasher of one default region sees it: its keys are
    ``(number, region)``, because a national number's digest depends on the region."""

    __slots__ = ("_find", "_region", "_store")

    def __init__(self, region: str | None) -> None:
        self._find = _PHONES.get
        self._store = _PHONES.put
        self._region = region

    def get(self, number: str) -> str | None:
        return self._find((number, self._region))

    def put(self, number: str, digest: str) -> None:
        self._store((number, self._region), digest)


def _hasher(
    name: str, normalise: Callable[[str], str], cache: _Cache, doc: str
) -> Callable[[str], str]:
    """A hasher of one field: a value that is a digest once trimmed passes through
    lower-cased; any other is normalised (from its trimmed form) and hashed, and its
    digest cached under the trimmed form."""
    # Bound once: the hit path is a trim, a length test and this lookup.
    find = cache.get
    remember = cache.put

    def hash_value(value: str) -> str:
        key = value.strip()
        if len(key) == 64 and is_sha256_hex(key):
            return key.lower()
        digest = find(key)
        if digest is None:
            digest = sha256_hex(normalise(key))
            remember(key, digest)
        return digest

    hash_value.__name__ = hash_value.__qualname__ = name
    hash_value.__doc__ = doc
    return hash_value


hash_email: Final = _hasher(
    "hash_email", normalize_email, _EMAILS, "The value TikTok expects in ``user.email``."
)
hash_external_id: Final = _hasher(
    "hash_external_id",
    normalize_external_id,
    _EXTERNAL_IDS,
    "The value TikTok expects in ``user.external_id``.",
)
hash_first_name: Final = _hasher(
    "hash_first_name",
    normalize_first_name,
    _NAMES,
    "The value TikTok expects in ``user.first_name`` (see :func:`normalize_first_name`).",
)
hash_last_name: Final = _hasher(
    "hash_last_name",
    normalize_last_name,
    _NAMES,
    "The value TikTok expects in ``user.last_name`` (see :func:`normalize_last_name`).",
)
hash_zip_code: Final = _hasher(
    "hash_zip_code",
    normalize_zip_code,
    _ZIP_CODES,
    "The value TikTok expects in ``user.zip_code`` (see :func:`normalize_zip_code`).",
)


# One hasher per default region, made on first use; a process uses one or two. The
# bound only keeps a caller passing arbitrary regions from piling up hashers.
@lru_cache(maxsize=64)
def phone_hasher(default_region: str | None) -> Callable[[str], str]:
    """:func:`hash_phone` with ``default_region`` bound: what a mapping calls per record
    (one call where ``hash_phone`` is three)."""
    return _hasher(
        "hash_phone",
        partial(normalize_phone, default_region=default_region),
        _RegionalPhones(default_region),
        "The value TikTok expects in ``user.phone``.",
    )


def hash_phone(value: str, default_region: str | None = None) -> str:
    """The value TikTok expects in ``user.phone``; ``default_region`` as in
    :func:`normalize_phone`."""
    return phone_hasher(default_region)(value)
