"""PII normalisation and hashing: TikTok's published vectors and properties."""

from __future__ import annotations

import hashlib
import string
import unicodedata
from collections.abc import Callable
from random import Random

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor import pii


def sha256(normal_form: str) -> str:
    """What TikTok receives for a field whose documented normal form is ``normal_form``."""
    return hashlib.sha256(normal_form.encode()).hexdigest()


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
        (pii.hash_external_id, "x" * 513),
        (pii.hash_email, "alice@example.com" + "\u200b" * 1024),
        (pii.hash_first_name, "!?"),
        (pii.hash_first_name, "Ann" * 100),
        (pii.hash_last_name, "-- \U0001f338 --"),
        (pii.hash_zip_code, "SW1A 1AA " * 5),
        (pii.normalize_country, "Atlantis"),
        (pii.normalize_country, "ZZ"),
        (pii.normalize_city, "Springfield" * 30),
        (pii.normalize_state, "\u200b\u2060"),
        (pii.normalize_click_id, " \t "),
    ],
)
def test_invalid_values_raise_without_revealing_them(hasher: object, bad: str) -> None:
    with pytest.raises(pii.PiiError) as caught:
        hasher(bad)  # type: ignore[operator]
    if bad.strip():
        assert bad.strip() not in str(caught.value)


HASHERS: dict[str, Callable[[str], str]] = {
    "email": pii.hash_email,
    "phone": pii.hash_phone,
    "external_id": pii.hash_external_id,
    "first_name": pii.hash_first_name,
    "last_name": pii.hash_last_name,
    "zip_code": pii.hash_zip_code,
}


@pytest.mark.parametrize("field", HASHERS)
@pytest.mark.parametrize(("left", "right"), [("", ""), ("  ", "  "), ("\t", "\r\n"), ("", " ")])
def test_prehashed_values_pass_through_lowercased_once_trimmed(
    field: str, left: str, right: str
) -> None:
    digest = sha256("x@example.com")
    for spelling in [digest, digest.upper(), digest[:32].upper() + digest[32:]]:
        assert HASHERS[field](left + spelling + right) == digest


def test_a_padded_prehashed_external_id_is_not_hashed_again() -> None:
    digest = sha256("user_123")
    assert pii.hash_external_id(f"  {digest.upper()}  ") == digest != sha256(digest)


def test_sixty_four_characters_that_are_not_hex_are_normalised_and_hashed() -> None:
    value = "g" * 64
    assert pii.hash_external_id(f" {value} ") == sha256(value)
    assert pii.hash_first_name(f" {value.upper()} ") == sha256(value)


def test_only_64_character_values_pay_for_the_digest_test(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hot path: a trim, a length test, a cache lookup. The regex runs only for the
    # rare value that is 64 characters long once trimmed.
    calls: list[str] = []
    real = pii.is_sha256_hex

    def counting(value: str) -> bool:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(pii, "is_sha256_hex", counting)
    digest = sha256("x")
    assert pii.hash_email(" alice@example.com ") == sha256("alice@example.com")
    assert pii.hash_zip_code(" 94 102 ") == sha256("94102")
    assert calls == []
    assert pii.hash_email(f"  {digest}  ") == digest
    assert calls == [digest]


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


# -- email: Unicode ----------------------------------------------------------------------

# Unicode category Cf: zero-width space, non-joiner, joiner, word joiner, byte-order mark,
# soft hyphen, left-to-right mark.
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u200e"]


def test_composed_and_decomposed_email_hash_the_same() -> None:
    composed = "Jos\u00e9@Caf\u00e9.example"
    decomposed = "Jose\u0301@Cafe\u0301.example"
    expected = sha256("jos\u00e9@caf\u00e9.example")  # NFC, lower-cased
    assert pii.hash_email(composed) == expected
    assert pii.hash_email(decomposed) == expected
    assert pii.hash_email(decomposed.upper()) == expected


@pytest.mark.parametrize("invisible", INVISIBLE)
def test_invisible_format_characters_are_removed_from_emails(invisible: str) -> None:
    expected = sha256("alice@example.com")
    assert pii.hash_email(f"{invisible}alice@exa{invisible}mple.com{invisible}") == expected
    assert pii.hash_email(f" {invisible} ALICE@example.com {invisible}\n") == expected
    assert pii.normalize_email(f"{invisible}Alice@Example.com") == "alice@example.com"


def test_a_format_character_inside_an_accent_does_not_keep_it_from_composing() -> None:
    assert pii.hash_email("jose\u200b\u0301@example.com") == sha256("jos\u00e9@example.com")


def test_an_email_of_invisible_characters_only_is_empty() -> None:
    with pytest.raises(pii.PiiError, match="empty email address"):
        pii.hash_email(" \u200b\ufeff ")


def unicode_text(max_size: int = 24) -> st.SearchStrategy[str]:
    """Letters, accents, punctuation, symbols, spaces, digits and invisible characters."""
    return st.text(
        st.one_of(
            st.characters(categories=["L", "M", "N", "P", "S", "Zs", "Cf"]),
            st.sampled_from([*INVISIBLE, "e", "\u0301", "\u0316", " ", "-", "'", "@", "."]),
        ),
        max_size=max_size,
    )


def outcome_of(compute: Callable[[str], str], value: str) -> str | type[Exception]:
    try:
        return compute(value)
    except pii.PiiError:
        return pii.PiiError


UNICODE_NORMALISERS: list[Callable[[str], str]] = [
    pii.hash_email,
    pii.hash_first_name,
    pii.hash_last_name,
    pii.normalize_city,
    pii.normalize_state,
]


@given(unicode_text())
def test_canonically_equivalent_spellings_give_one_result(text: str) -> None:
    nfc, nfd = unicodedata.normalize("NFC", text), unicodedata.normalize("NFD", text)
    for compute in UNICODE_NORMALISERS:
        assert outcome_of(compute, nfc) == outcome_of(compute, nfd)


@given(unicode_text(), st.lists(st.sampled_from(INVISIBLE), max_size=4), st.randoms())
def test_invisible_characters_anywhere_change_nothing(
    text: str, invisible: list[str], rng: Random
) -> None:
    spread = list(text)
    for char in invisible:
        spread.insert(rng.randrange(len(spread) + 1), char)
    for compute in UNICODE_NORMALISERS:
        assert outcome_of(compute, "".join(spread)) == outcome_of(
            compute, "".join(c for c in text if c not in INVISIBLE)
        )


# -- first_name, last_name, zip_code (hashed) --------------------------------------------

NAMES = [
    (" Jean-Paul ", "jeanpaul"),
    ("O'Brien", "obrien"),
    ("  Mary \t Ann\u00a0 Smith\n", "mary ann smith"),
    ("Anne-Marie  d'Arc", "annemarie darc"),
    ("Dr. J.R.R. Tolkien", "dr jrr tolkien"),
    ("Zo\u00eb\u2122 \U0001f338", "zo\u00eb"),
    ("Jose\u0301", "jos\u00e9"),
    ("\u200bANNA\u200d", "anna"),
    ("\u00c9LODIE", "\u00e9lodie"),
    ("Nguy\u1ec5n", "nguy\u1ec5n"),
    ("\u674e \u5c0f\u9f99", "\u674e \u5c0f\u9f99"),
    ("R2-D2", "r2d2"),
]


@pytest.mark.parametrize(("raw", "normal"), NAMES)
def test_names_are_hashed_in_their_documented_normal_form(raw: str, normal: str) -> None:
    assert pii.normalize_first_name(raw) == pii.normalize_last_name(raw) == normal
    assert pii.hash_first_name(raw) == sha256(normal)
    assert pii.hash_last_name(raw) == sha256(normal)


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize("raw", ["", "   ", "!?!", "\u200b", "-- \U0001f338 --", "\u2122"])
def test_a_name_with_nothing_left_is_empty(field: str, raw: str) -> None:
    with pytest.raises(pii.PiiError, match=f"^empty {field}$"):
        HASHERS[field](raw)


@pytest.mark.parametrize("field", ["first_name", "last_name"])
def test_absurdly_long_names_are_refused(field: str) -> None:
    assert HASHERS[field](" " + "a" * 256 + " ") == sha256("a" * 256)
    with pytest.raises(pii.PiiError, match=f"^{field} too long$"):
        HASHERS[field]("a" * 257)


@given(unicode_text(40))
def test_a_normal_name_has_no_punctuation_symbols_format_or_extra_space(text: str) -> None:
    try:
        name = pii.normalize_first_name(text)
    except pii.PiiError:
        return
    assert name == name.strip()
    assert "  " not in name
    assert all(c == " " or not c.isspace() for c in name)
    assert not {unicodedata.category(c)[0] for c in name} & {"P", "S"}
    assert all(unicodedata.category(c) != "Cf" for c in name)
    assert pii.hash_first_name(text) == sha256(name)


ZIP_CODES = [
    (" SW1A 1AA ", "sw1a1aa"),
    ("94 102", "94102"),
    ("12345-6789", "12345-6789"),
    ("1000-001", "1000-001"),
    ("K1A\t0B1", "k1a0b1"),
    ("75\u00a0008", "75008"),
]


@pytest.mark.parametrize(("raw", "normal"), ZIP_CODES)
def test_zip_codes_are_hashed_lower_cased_without_white_space(raw: str, normal: str) -> None:
    assert pii.normalize_zip_code(raw) == normal
    assert pii.hash_zip_code(raw) == sha256(normal)


def test_empty_and_absurdly_long_zip_codes_are_refused() -> None:
    with pytest.raises(pii.PiiError, match=r"^empty zip_code$"):
        pii.hash_zip_code(" \t ")
    assert pii.hash_zip_code("9" * 32) == sha256("9" * 32)
    with pytest.raises(pii.PiiError, match=r"^zip_code too long$"):
        pii.hash_zip_code("9" * 33)


# -- country, city, state (normalised, not hashed) ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"), [("US", "us"), (" us ", "us"), ("Gb", "gb"), ("\tfr\n", "fr"), ("XK", "xk")]
)
def test_countries_are_lower_cased_alpha_2_codes(raw: str, code: str) -> None:
    assert pii.normalize_country(raw) == code


@pytest.mark.parametrize(
    "raw",
    ["USA", "U", "ZZ", "UK", "EU", "001", "u s", "\u017fs", "\uff35\uff33", "United States"],
)
def test_anything_but_a_known_alpha_2_code_is_not_a_country(raw: str) -> None:
    # UK and EU are reserved, not assigned; the long s upper-cases to "S" ("SS"); the
    # full-width letters are not ASCII.
    with pytest.raises(pii.PiiError, match=r"^country is not an ISO 3166-1 alpha-2 code$"):
        pii.normalize_country(raw)


def test_an_empty_country_is_refused() -> None:
    with pytest.raises(pii.PiiError, match=r"^empty country$"):
        pii.normalize_country("  ")


def test_every_region_libphonenumber_knows_is_a_country() -> None:
    for region in phonenumbers.SUPPORTED_REGIONS:
        assert pii.normalize_country(f" {region} ") == region.lower()


PLACES = [
    (" New   York ", "new york"),
    ("Sa\u0303o\tPaulo", "s\u00e3o paulo"),
    ("St. Louis", "st. louis"),
    ("\u200bM\u00fcnchen\ufeff", "m\u00fcnchen"),
    ("CA", "ca"),
    ("Saint-\u00c9tienne", "saint-\u00e9tienne"),
]


@pytest.mark.parametrize(("raw", "normal"), PLACES)
def test_cities_and_states_are_lower_cased_with_single_spaces(raw: str, normal: str) -> None:
    assert pii.normalize_city(raw) == normal
    assert pii.normalize_state(raw) == normal


@pytest.mark.parametrize(
    ("field", "normalise"), [("city", pii.normalize_city), ("state", pii.normalize_state)]
)
def test_empty_and_absurdly_long_places_are_refused(
    field: str, normalise: Callable[[str], str]
) -> None:
    for empty in ["", "  ", "\u200b \u2060"]:
        with pytest.raises(pii.PiiError, match=f"^empty {field}$"):
            normalise(empty)
    assert normalise("a" * 256) == "a" * 256
    with pytest.raises(pii.PiiError, match=f"^{field} too long$"):
        normalise("a" * 257)


# -- ttclid, ttp ---------------------------------------------------------------------------


def test_click_ids_are_trimmed_and_keep_their_case() -> None:
    assert pii.normalize_click_id("  E.C.P.v3Xk9QmZ\n") == "E.C.P.v3Xk9QmZ"
    assert pii.normalize_click_id("Qm4tZr8LwP2vN6cXy0HbJ3sKdAe") == "Qm4tZr8LwP2vN6cXy0HbJ3sKdAe"
    with pytest.raises(pii.PiiError, match=r"^empty click id$"):
        pii.normalize_click_id(" \t ")


# -- the hash caches ---------------------------------------------------------------------


NORMALISERS: dict[str, Callable[[str, str | None], str]] = {
    "email": lambda value, _: pii.normalize_email(value),
    "phone": pii.normalize_phone,
    "external_id": lambda value, _: pii.normalize_external_id(value),
    "first_name": lambda value, _: pii.normalize_first_name(value),
    "last_name": lambda value, _: pii.normalize_last_name(value),
    "zip_code": lambda value, _: pii.normalize_zip_code(value),
}


def uncached(hasher: str, value: str, region: str | None = None) -> str:
    """What the hashers compute, without any cache (module docstring)."""
    if pii.is_sha256_hex(value.strip()):
        return value.strip().lower()
    return pii.sha256_hex(NORMALISERS[hasher](value, region))


def cached(hasher: str, value: str, region: str | None = None) -> str:
    if hasher == "phone":
        return pii.hash_phone(value, region)
    return HASHERS[hasher](value)


PADDING = 3_000_000


@pytest.mark.parametrize(
    ("hasher", "value"),
    [
        ("email", "user{}@example.com"),
        ("external_id", "user-{}"),
        ("phone", "+1415555{:04d}"),
        ("first_name", "Ann{}"),
        ("last_name", "Smith-{}"),
        ("zip_code", "{:05d}"),
    ],
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
    for hasher, bad in [
        (pii.hash_email, "not-an-address"),
        (pii.hash_email, " x" * 10_000 + "@example.com"),
        (pii.hash_first_name, "!!!"),
        (pii.hash_zip_code, "9" * 40),
    ]:
        for _ in range(2):
            with pytest.raises(pii.PiiError):
                hasher(bad)
    assert pii.cache_info().entries == 0


def test_all_the_caches_together_are_bounded_by_hash_cache_bytes() -> None:
    pii.cache_clear()
    for i in range(200):
        for hasher in HASHERS.values():
            hasher(f"{i:05d}@example.com" if hasher is pii.hash_email else f"+1415555{i:04d}")
    info = pii.cache_info()
    assert info.max_bytes == pii.HASH_CACHE_BYTES
    assert 0 < info.bytes <= info.max_bytes
    pii.cache_clear()
    assert pii.cache_info() == pii.CacheInfo(0, 0, pii.HASH_CACHE_BYTES)


def test_first_and_last_names_share_one_cache_entry() -> None:
    # Normalised alike, so one trimmed name has one digest whichever field it came in.
    pii.cache_clear()
    assert pii.hash_first_name("Morgan") == pii.hash_last_name(" Morgan ") == sha256("morgan")
    assert pii.cache_info().entries == 1


def test_a_phone_is_cached_per_default_region() -> None:
    pii.cache_clear()
    assert pii.hash_phone("07700 900123", "GB") == sha256("+447700900123")
    with pytest.raises(pii.PiiError, match="country code"):
        pii.hash_phone("07700 900123")
    assert pii.hash_phone("(415) 555-0142", "US") == sha256("+14155550142")
    assert pii.hash_phone("(415) 555-0142", "GB") == sha256("+444155550142")
    assert pii.hash_phone("+44 7700 900123", "US") == pii.hash_phone("+447700900123", None)


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
    unicode_text(),
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
            st.sampled_from(sorted(HASHERS)),
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
