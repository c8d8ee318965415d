"""A realistic clickstream generator: the four seed kinds plus records that must be filtered.

Used by ``produce-sample``, the demo, the benchmarks and the tests. Deterministic
for a seed: the same seed gives the same records, and each record says which
TikTok event ``config/example.yaml`` makes of it (``None``: filtered out), so a
run's expected per-event counts are known in advance.

The mix is shaped like a content-and-commerce site: most traffic is page views,
half of them on pages that are not worth an event (home, blog, docs, pricing);
a few percent are sign-ups and forms, a quarter of the forms are newsletter
sign-ups (not leads). Visitors come back, so PII repeats as in real traffic.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

#: Default topic of each record kind, as in ``config/example.yaml``.
DEFAULT_TOPICS: Final = {
    "page_view": "web.pageviews",
    "button_click": "web.clicks",
    "sign_up": "web.signups",
    "form_submit": "web.forms",
}

EVENT_PAGE_TYPES: Final = ("product", "comparison", "announcement", "release")
OTHER_PAGE_TYPES: Final = ("home", "blog", "docs", "pricing", "category")

_USER_AGENTS: Final = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Mobile Safari/537.36",
)
_LOCALES: Final = ("en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "ja-JP")
_CURRENCIES: Final = ("USD", "GBP", "EUR", "usd", "JPY")
_BUTTONS: Final = (
    ("cta-start-trial", "Start free trial", "pricing-hero"),
    ("add-to-cart", "Add to cart", "product-actions"),
    ("wishlist-add", "Save", "product-actions"),
    ("book-demo", "Book a demo", "header"),
)
_FORMS: Final = (
    ("contact-sales", "Contact sales", "contact"),
    ("demo-request", "Request a demo", "demo-request"),
    ("quote", "Get a quote", "quote"),
)


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One generated record and the TikTok event it should become (``None``: filtered)."""

    kind: str
    topic: str
    key: bytes
    value: bytes
    expected_event: str | None


@dataclass(frozen=True, slots=True)
class _Visitor:
    anonymous_id: str
    user_id: str | None
    email: str | None
    phone: str | None
    ip: str
    user_agent: str
    locale: str


class ClickstreamGenerator:
    """Generates :class:`SampleRecord` s; ``start`` is the first record's time (epoch s)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        start: float,
        topics: dict[str, str] | None = None,
        visitors: int = 5000,
        step_ms: float = 3.0,
    ) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - sample data, not security
        self._topics = {**DEFAULT_TOPICS, **(topics or {})}
        self._time_ms = start * 1000.0
        self._step_ms = step_ms
        self._visitors = [self._visitor(i) for i in range(visitors)]

    def _visitor(self, i: int) -> _Visitor:
        rng = self._rng
        known = rng.random() < 0.4
        phone = None
        if known and rng.random() < 0.6:
            phone = rng.choice(
                (
                    f"+1 415 555 {rng.randrange(10000):04d}",
                    f"+44 7700 9{rng.randrange(100000):05d}",
                    f"(212) 555-{rng.randrange(10000):04d}",
                    f"+49 151 {rng.randrange(10**7, 10**8)}",
                )
            )
        return _Visitor(
            anonymous_id=f"anon-{rng.getrandbits(48):012x}",
            user_id=f"user-{i}" if known else None,
            email=(f" Visitor.{i}@Example.com " if i % 3 == 0 else f"visitor{i}@example.org")
            if known
            else None,
            phone=phone,
            ip=f"198.51.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            if rng.random() < 0.8
            else f"2001:db8::{rng.randrange(65536):x}",
            user_agent=rng.choice(_USER_AGENTS),
            locale=rng.choice(_LOCALES),
        )

    def _timestamp(self) -> Any:
        self._time_ms += self._step_ms
        if self._rng.random() < 0.25:
            return int(self._time_ms)  # epoch milliseconds, as some trackers send
        moment = datetime.fromtimestamp(self._time_ms / 1000.0, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _base(self, kind: str, visitor: _Visitor) -> dict[str, Any]:
        record: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            "type": kind,
            "timestamp": self._timestamp(),
            "anonymous_id": visitor.anonymous_id,
            "user_id": visitor.user_id,
            "session_id": f"s-{self._rng.getrandbits(32):08x}",
            "context": {
                "ip": visitor.ip,
                "user_agent": visitor.user_agent,
                "locale": visitor.locale,
            },
        }
        if visitor.email or visitor.phone:
            record["user"] = {"email": visitor.email, "phone": visitor.phone}
        return record

    def _page(self, page_type: str, path: str, ad_click: bool) -> dict[str, Any]:
        url = f"https://shop.example.com{path}"
        if ad_click:
            url += f"?utm_source=tiktok&ttclid=E.C.P.{self._rng.getrandbits(40):010x}"
        referrer = "https://www.tiktok.com/" if ad_click else "https://shop.example.com/"
        return {"url": url, "referrer": referrer, "path": path, "type": page_type}

    def _product(self) -> dict[str, Any]:
        sku = self._rng.randrange(1000, 9999)
        return {
            "sku": f"sku-{sku}" if sku % 5 else sku,
            "name": f"Product {sku}",
            "category": self._rng.choice(("outerwear", "shoes", "bags", "software")),
            "price": round(self._rng.uniform(5, 400), 2),
            "currency": self._rng.choice(_CURRENCIES),
        }

    def _page_view(self, visitor: _Visitor) -> tuple[dict[str, Any], str | None]:
        record = self._base("page_view", visitor)
        ad_click = self._rng.random() < 0.15
        if self._rng.random() < 0.5:
            page_type = self._rng.choice(EVENT_PAGE_TYPES)
            record["page"] = self._page(
                page_type, f"/{page_type}/{self._rng.randrange(500)}", ad_click
            )
            if page_type == "product":
                record["product"] = self._product()
            return record, "ViewContent"
        page_type = self._rng.choice(OTHER_PAGE_TYPES)
        record["page"] = self._page(page_type, f"/{page_type}", ad_click)
        return record, None

    def _click(self, visitor: _Visitor) -> tuple[dict[str, Any], str | None]:
        record = self._base("button_click", visitor)
        button_id, text, section = self._rng.choice(_BUTTONS)
        on_product = section == "product-actions"
        record["page"] = self._page("product" if on_product else "pricing", "/p/1", False)
        record["button"] = {"id": button_id, "text": text, "section": section}
        if on_product:
            record["product"] = self._product()
        return record, "ClickButton"

    def _sign_up(self, visitor: _Visitor) -> tuple[dict[str, Any], str | None]:
        record = self._base("sign_up", visitor)
        record["user_id"] = visitor.user_id or f"user-new-{self._rng.getrandbits(32):08x}"
        record["user"] = {
            "email": visitor.email or f"new.{self._rng.getrandbits(32):08x}@example.net",
            "phone": visitor.phone,
        }
        record["page"] = self._page("signup", "/signup/done", self._rng.random() < 0.2)
        record["signup"] = {
            "method": self._rng.choice(("email", "google", "apple")),
            "plan": "free",
        }
        return record, "CompleteRegistration"

    def _form(self, visitor: _Visitor) -> tuple[dict[str, Any], str | None]:
        record = self._base("form_submit", visitor)
        record["page"] = self._page("contact", "/contact", False)
        if self._rng.random() < 0.25:
            record["form"] = {"id": "newsletter", "name": "Newsletter", "kind": "newsletter"}
            return record, None
        form_id, name, kind = self._rng.choice(_FORMS)
        record["form"] = {"id": form_id, "name": name, "kind": kind}
        if self._rng.random() < 0.5:
            record["form"]["estimated_value"] = self._rng.choice((500, 1200, 5000))
            record["form"]["currency"] = "USD"
        record["user"] = {
            "email": visitor.email or f"lead.{self._rng.getrandbits(32):08x}@example.org",
            "phone": visitor.phone,
        }
        return record, "Lead"

    def records(self, count: int) -> Iterator[SampleRecord]:
        """``count`` records: 60% page views, 20% clicks, 8% sign-ups, 12% forms."""
        makers = (self._page_view, self._click, self._sign_up, self._form)
        kinds = ("page_view", "button_click", "sign_up", "form_submit")
        weights = (60, 20, 8, 12)
        for _ in range(count):
            index = self._rng.choices(range(4), weights)[0]
            visitor = self._rng.choice(self._visitors)
            record, expected = makers[index](visitor)
            kind = kinds[index]
            yield SampleRecord(
                kind=kind,
                topic=self._topics[kind],
                key=record["anonymous_id"].encode(),
                value=orjson.dumps(record),
                expected_event=expected,
            )


def expected_counts(records: list[SampleRecord]) -> Counter[str]:
    """Per-event counts the example configuration should deliver for ``records``."""
    return Counter(r.expected_event for r in records if r.expected_event is not None)


def generate(
    count: int, *, seed: int, start: float, topics: Mapping[str, str] | None = None
) -> tuple[list[SampleRecord], Counter[str]]:
    """``count`` sample records and the per-event counts they should become."""
    records = list(
        ClickstreamGenerator(seed=seed, start=start, topics=dict(topics or {})).records(count)
    )
    expected = Counter(r.expected_event for r in records if r.expected_event is not None)
    return records, expected
