"""PII normalisation and hashing: TikTok's published vectors and properties."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor import pii

# ../shared/tiktok-events-api.md §3 and §8 (recomputed with hashlib there).
VECTORS = [
    (pii.hash_email, " ALICE_abc@gmail.com ", "848a771458438fc2ec420560d769fb9b9b86851ee338ec56517baabd79d3bb4f"),
    (pii.hash_phone, "(+1)2133734253", "9f7ec22d72092cd3c0b58726ed9c2d91b92e51a3f29837508fb2948bb22dd2fd"),
    (pii.hash_external_id, "user_123", "80fba0ae1c48e3978e43e4efc365e14e12ea0c830ba8ba5b9a2dafc7e3f2ab8b"),
    (pii.hash_email, "jane.doe@example.com", "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"),
    (pii.hash_phone, "+447700900123", "a8acc3a90a7b4e4dc65e93db9240ed26523050ef754d63b75b5161de76781436"),
    (pii.hash_external_id, "user-8841", "8dec7f953696ab23765e83f9d8252c223414f6b6e8b4e64842c6a4a6625599d6"),
    (pii.hash_email, "lead.form@example.org", "076bc95cb6fca21c74b3376044f67ff8fe3f13fffcc62bbbdfd945da6a23c13f"),
    (pii.hash_phone, "+14155550142", "abbf04d6f629b136344993dfb197f1fd9296f712eaf103ebc22b1cc29fb0f135"),
]  # fmt: skip


@pytest.mark.parametrize(("hasher", "raw", "expected"), VECTORS)
def test_tiktok_reference_vectors(hasher: object, raw: str, expected: str) -> None:
    assert hasher(raw) == expected  # type: ignore[operator]


@pytest.mark.parametrize(
    "spelling",
    ["+44 7700 900123", "+44 (0)7700 900123", "+44-7700-900-123", "00447700900123", "07700 900123"],
)
def test_phone_spellings_normalise_to_one_e164(spelling: str) -> None:
    assert pii.normalize_phone(spelling, "GB") == "+447700900123"


def test_national_number_needs_a_default_region() -> None:
    with pytest.raises(pii.PiiError, match="country code"):
        pii.normalize_phone("(415) 555-0142")
    assert pii.normalize_phone("(415) 555-0142", "US") == "+14155550142"


@pytest.mark.parametrize(
    ("hasher", "bad"),
    [
        (pii.hash_email, "not-an-address"),
        (pii.hash_email, "two@@example.com"),
        (pii.hash_email, "   "),
        (pii.hash_phone, "12345"),
        (pii.hash_phone, "call me maybe"),
        (pii.hash_phone, "+1 555"),
        (pii.hash_external_id, "  "),
    ],
)
def test_invalid_values_raise_without_revealing_them(hasher: object, bad: str) -> None:
    with pytest.raises(pii.PiiError) as caught:
        hasher(bad)  # type: ignore[operator]
    if bad.strip():
        assert bad.strip() not in str(caught.value)


def test_prehashed_values_pass_through_lowercased() -> None:
    digest = hashlib.sha256(b"x@example.com").hexdigest()
    assert pii.hash_email(digest) == digest
    assert pii.hash_email(digest.upper()) == digest
    assert pii.hash_phone(digest) == digest
    assert pii.hash_external_id(digest) == digest


emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20),
    st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=20),
    st.text(string.ascii_letters, min_size=2, max_size=6),
)


@given(emails, st.text(" \t", max_size=3), st.text(" \t", max_size=3))
def test_email_hash_ignores_case_and_surrounding_space(email: str, left: str, right: str) -> None:
    expected = pii.sha256_hex(email.lower())
    assert pii.hash_email(left + email.upper() + right) == expected
    assert pii.hash_email(email.swapcase()) == expected


@given(emails)
def test_hashing_is_idempotent(email: str) -> None:
    once = pii.hash_email(email)
    assert pii.hash_email(once) == once
    assert len(once) == 64
    assert set(once) <= set("0123456789abcdef")


@given(st.text(min_size=1, max_size=100).filter(lambda s: s.strip()))
def test_external_id_hash_is_trimmed_sha256(value: str) -> None:
    result = pii.hash_external_id(value)
    if pii.is_sha256_hex(value):
        assert result == value.lower()
    else:
        assert result == hashlib.sha256(value.strip().encode()).hexdigest()


@given(st.integers(min_value=2_000_000_000, max_value=9_999_999_999))
def test_phone_hash_is_independent_of_formatting(number: int) -> None:
    digits = str(number)
    plain = f"+1{digits}"
    spaced = f"+1 ({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    try:
        expected = pii.hash_phone(plain)
    except pii.PiiError:
        return  # not a possible US number: nothing to compare
    assert pii.hash_phone(spaced) == expected


# -- the hash caches ---------------------------------------------------------------------


def uncached(hasher: str, value: str, region: str | None = None) -> str:
    """What the hashers compute, without any cache (module docstring)."""
    if pii.is_sha256_hex(value):
        return value.lower()
    if hasher == "email":
        return pii.sha256_hex(pii.normalize_email(value))
    if hasher == "phone":
        return pii.sha256_hex(pii.normalize_phone(value, region))
    return pii.sha256_hex(pii.normalize_external_id(value))


def cached(hasher: str, value: str, region: str | None = None) -> str:
    if hasher == "email":
        return pii.hash_email(value)
    if hasher == "phone":
        return pii.hash_phone(value, region)
    return pii.hash_external_id(value)


PADDING = 3_000_000


@pytest.mark.parametrize(
    ("hasher", "value"),
    [("email", "user{}@example.com"), ("external_id", "user-{}"), ("phone", "+1415555{:04d}")],
)
def test_values_padded_to_megabytes_are_not_kept_by_the_cache(hasher: str, value: str) -> None:
    # 300 records of 3 MB each once kept 900 MB alive through caches keyed on raw values.
    pii.cache_clear()
    for i in range(300):
        padded = " " * PADDING + value.format(i) + "\t" * (i % 3)
        assert cached(hasher, padded) == uncached(hasher, value.format(i))
    info = pii.cache_info()
    assert info.entries == 300
    assert info.bytes <= info.max_bytes == pii.HASH_CACHE_BYTES
    # The trimmed values only: far below even one padded value.
    assert info.bytes < PADDING // 10


def test_the_cache_stays_within_its_byte_bound_and_evicts_the_least_recently_used() -> None:
    pii.cache_clear()
    first = "first@example.com"
    pii.hash_email(first)
    count = 40_000  # well past what half of HASH_CACHE_BYTES holds
    for i in range(count):
        pii.hash_email(f"visitor.{i}@example.com")
        if i % 1000 == 0:
            pii.hash_email(first)  # kept recent: never evicted
        info = pii.cache_info()
        assert info.bytes <= info.max_bytes
    info = pii.cache_info()
    assert 1000 < info.entries < count
    assert info.bytes > info.max_bytes // 3  # the email share is actually used
    entries = pii._EMAILS._entries  # the order of eviction is not visible otherwise
    assert first in entries
    assert "visitor.0@example.com" not in entries  # the oldest went first
    assert f"visitor.{count - 1}@example.com" in entries


def test_invalid_values_are_not_cached() -> None:
    pii.cache_clear()
    for bad in ["not-an-address", " x" * 10_000 + "@example.com"]:
        for _ in range(2):
            with pytest.raises(pii.PiiError):
                pii.hash_email(bad)
    assert pii.cache_info().entries == 0


@pytest.mark.parametrize(("hasher", "raw", "expected"), VECTORS)
def test_reference_vectors_are_the_same_from_the_cache(
    hasher: object, raw: str, expected: str
) -> None:
    pii.cache_clear()
    assert hasher(raw) == expected  # type: ignore[operator]  # a miss
    assert hasher(raw) == expected  # type: ignore[operator]  # a hit
    assert hasher(f"  {raw}\n") == expected  # type: ignore[operator]  # the same trimmed key


Hasher = Callable[[str, str, str | None], str]


def outcome(compute: Hasher, hasher: str, value: str, region: str | None) -> str | type[Exception]:
    """The digest, or PiiError when the value is refused."""
    try:
        return compute(hasher, value, region)
    except pii.PiiError:
        return pii.PiiError


values = st.one_of(
    st.text(max_size=40),
    emails,
    st.builds(lambda e: e.upper(), emails),
    st.text("0123456789 +()-", max_size=20),
    st.text("0123456789abcdefABCDEF", min_size=64, max_size=64),
)
padded = st.builds(
    lambda left, value, right: left + value + right,
    st.text(" \t\n", max_size=4),
    values,
    st.text(" \t\n", max_size=4),
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["email", "phone", "external_id"]),
            padded,
            st.sampled_from([None, "US", "GB"]),
        ),
        max_size=30,
    )
)
def test_cached_hashing_gives_what_uncached_hashing_gives(
    calls: list[tuple[str, str, str | None]],
) -> None:
    # Twice over, so each value is looked up as a miss and then (when valid) as a hit,
    # with the caches holding whatever earlier examples left in them.
    for _ in range(2):
        for hasher, value, region in calls:
            expected = outcome(uncached, hasher, value, region)
            assert outcome(cached, hasher, value, region) == expected
