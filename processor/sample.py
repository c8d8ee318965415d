"""A realistic clickstream generator: the four seed kinds plus records that must be filtered.

Used by ``produce-sample``, the demo, the benchmarks and the tests. Deterministic
for a seed: the same seed gives the same records, and each record says which
TikTok event ``config/example.yaml`` makes of it (``None``: filtered out), so a
run's expected per-event counts are known in advance.

The mix is shaped like a content-and-commerce site: most traffic is page views,
half of them on pages that are not worth an event (home, blog, docs, pricing);
a few percent are sign-ups and forms, a quarter of the forms are newsletter
sign-ups (not leads). Visitors come back, so PII repeats as in real traffic.

The same visitors and traffic also come in the shapes the mapping presets read
(:data:`SHAPE_TOPICS`): Segment and RudderStack messages, Snowplow enriched events
and GA4 Measurement Protocol bodies, each record saying which TikTok events a mapping
``preset: <shape>`` makes of it (a GA4 body may become several).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from processor import pii

#: Default topic of each record kind, as in ``config/example.yaml``.
DEFAULT_TOPICS: Final = {
    "page_view": "web.pageviews",
    "button_click": "web.clicks",
    "sign_up": "web.signups",
    "form_submit": "web.forms",
}

#: The shapes of the mapping presets: each is one topic (its default here) of records
#: that a mapping ``preset: <shape>`` reads.
SHAPE_TOPICS: Final = {
    "segment": "segment.events",
    "snowplow": "snowplow.enriched",
    "ga4": "ga4.mp",
}
#: Every shape ``produce-sample --shape`` writes; the first is the default.
SHAPES: Final = ("clickstream", *SHAPE_TOPICS)

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
    """One generated record and the TikTok event it should become (``None``: filtered).

    A record that becomes several events (a GA4 body's ``events[]``) has the first as
    ``expected_event`` and the others in ``further_events``.
    """

    kind: str
    topic: str
    key: bytes
    value: bytes
    expected_event: str | None
    further_events: tuple[str, ...] = ()

    @property
    def expected_events(self) -> tuple[str, ...]:
        """Every TikTok event the record should become, in order."""
        first = () if self.expected_event is None else (self.expected_event,)
        return first + self.further_events


@dataclass(frozen=True, slots=True)
class _Visitor:
    anonymous_id: str
    user_id: str | None
    email: str | None
    phone: str | None
    ip: str
    user_agent: str
    locale: str


class _Generator(ABC):
    """What every shape shares: the seeded randomness, the clock, the returning visitors."""

    #: Default topic of each record kind.
    TOPICS: Mapping[str, str] = DEFAULT_TOPICS

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
        self._topics = {**self.TOPICS, **(topics or {})}
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

    @abstractmethod
    def records(self, count: int) -> Iterator[SampleRecord]:
        """``count`` records."""

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _next_ms(self) -> float:
        self._time_ms += self._step_ms
        return self._time_ms

    def _iso(self, ms: float) -> str:
        moment = datetime.fromtimestamp(ms / 1000.0, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ClickstreamGenerator(_Generator):
    """Generates :class:`SampleRecord` s of the four seed kinds; ``start`` is the first
    record's time (epoch s)."""

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


_BRANDS: Final = ("Acme", "Northwind", "Globex")
_CATEGORIES: Final = ("Outerwear", "Shoes", "Bags", "Software")


@dataclass(frozen=True, slots=True)
class _Item:
    sku: str
    name: str
    category: str
    brand: str
    price: float
    quantity: int


#: A generator's record and the TikTok events it should become.
_Made = tuple[dict[str, Any], tuple[str, ...]]


class _PresetShapeGenerator(_Generator, ABC):
    """One topic of records in the shape a mapping preset reads (:data:`SHAPE_TOPICS`)."""

    SHAPE: str = ""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.TOPICS = {cls.SHAPE: SHAPE_TOPICS[cls.SHAPE]}

    @abstractmethod
    def _makers(self) -> tuple[tuple[Callable[[_Visitor], _Made], int], ...]:
        """The kinds of record, each with its weight in the mix."""

    def _key(self, visitor: _Visitor) -> str:
        return visitor.anonymous_id

    def records(self, count: int) -> Iterator[SampleRecord]:
        """``count`` records of the shape, in the proportions of :meth:`_makers`."""
        makers = self._makers()
        choices = [make for make, _ in makers]
        weights = [weight for _, weight in makers]
        for _ in range(count):
            make = self._rng.choices(choices, weights)[0]
            visitor = self._rng.choice(self._visitors)
            record, events = make(visitor)
            yield SampleRecord(
                kind=self.SHAPE,
                topic=self._topics[self.SHAPE],
                key=self._key(visitor).encode(),
                value=orjson.dumps(record),
                expected_event=events[0] if events else None,
                further_events=events[1:],
            )

    def _item(self) -> _Item:
        rng = self._rng
        number = rng.randrange(1000, 9999)
        return _Item(
            sku=f"sku-{number}",
            name=f"Product {number}",
            category=rng.choice(_CATEGORIES),
            brand=rng.choice(_BRANDS),
            price=round(rng.uniform(5, 400), 2),
            quantity=rng.choice((1, 1, 1, 2, 3)),
        )

    def _items(self) -> list[_Item]:
        return [self._item() for _ in range(self._rng.choice((1, 1, 2, 3)))]

    def _currency(self) -> str:
        return self._rng.choice(("USD", "GBP", "EUR", "USD"))

    def _url(self, path: str, ad_click: bool) -> tuple[str, str]:
        """A page URL (with a TikTok click id when the visit came from an ad) and its referrer."""
        url = f"https://shop.example.com{path}"
        if ad_click:
            url += f"?utm_source=tiktok&ttclid=E.C.P.{self._rng.getrandbits(40):010x}"
        return url, "https://www.tiktok.com/" if ad_click else "https://shop.example.com/"

    def _lead_email(self, visitor: _Visitor) -> str:
        return visitor.email or f"lead.{self._rng.getrandbits(32):08x}@example.org"


def _visitor_uuid(visitor: _Visitor) -> str:
    """A UUID that stays the visitor's (the cookie id trackers keep), drawn from no randomness."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, visitor.anonymous_id))


class SegmentGenerator(_PresetShapeGenerator):
    """Segment Spec messages, a third of them as RudderStack sends them: track calls of the
    preset's table, of events outside it, page and identify calls (both filtered)."""

    SHAPE = "segment"

    def _key(self, visitor: _Visitor) -> str:
        return _visitor_uuid(visitor)

    def _makers(self) -> tuple[tuple[Callable[[_Visitor], _Made], int], ...]:
        return (
            (self._page, 30),
            (self._identify, 4),
            (self._tracked("Product Viewed", "ViewContent", self._one_product), 18),
            (self._tracked("Products Searched", "Search", self._search), 5),
            (self._tracked("Product Added", "AddToCart", self._one_product), 8),
            (self._tracked("Product Added to Wishlist", "AddToWishlist", self._one_product), 2),
            (self._tracked("Checkout Started", "InitiateCheckout", self._products), 4),
            (self._tracked("Payment Info Entered", "AddPaymentInfo", self._payment), 3),
            (self._tracked("Order Completed", "Purchase", self._products), 3),
            (self._tracked("Signed Up", "CompleteRegistration", self._signed_up), 3),
            (self._tracked("Form Submitted", "Lead", self._form), 3),
            (self._tracked("Lead Generated", "Lead", self._form), 1),
            (self._tracked("Trial Started", "StartTrial", self._trial), 2),
            (self._tracked("Subscription Started", "Subscribe", self._subscription), 1),
            (self._tracked("Button Clicked", "ClickButton", self._button), 5),
            (self._tracked("Product Removed", None, self._one_product), 3),
            (self._tracked("Product List Viewed", None, self._products), 3),
        )

    def _message(
        self, visitor: _Visitor, kind: str, path: str, title: str, **fields: Any
    ) -> dict[str, Any]:
        rng = self._rng
        ms = self._next_ms()
        url, referrer = self._url(path, rng.random() < 0.12)
        query = url.partition("?")[2]
        context: dict[str, Any] = {
            "locale": visitor.locale,
            "page": {
                "path": path,
                "referrer": referrer,
                "search": f"?{query}" if query else "",
                "title": title,
                "url": url,
            },
            "userAgent": visitor.user_agent,
        }
        rudder = rng.random() < 0.3
        message: dict[str, Any] = {"anonymousId": _visitor_uuid(visitor), "context": context}
        message.update(fields)
        message.update(type=kind, userId=visitor.user_id, originalTimestamp=self._iso(ms))
        message["sentAt"] = self._iso(ms + 8)
        if rudder:
            # The RudderStack JavaScript SDK sends its traits with every call.
            context["library"] = {"name": "RudderLabs JavaScript SDK", "version": "3.11.0"}
            message.update(channel="web", rudderId=self._uuid(), messageId=self._uuid())
            forwarded = rng.random() < 0.5
        else:
            context["library"] = {"name": "analytics.js", "version": "next-1.70.0"}
            context["ip"] = visitor.ip
            message["messageId"] = f"ajs-next-{int(ms)}-{self._uuid()}"
            forwarded = True
        if visitor.email and (rudder or rng.random() < 0.5):
            context["traits"] = {"email": visitor.email, "phone": visitor.phone}
        if forwarded:
            # What the collecting server adds; a message straight from an SDK lacks it.
            message.update(receivedAt=self._iso(ms + 420), timestamp=self._iso(ms + 12))
            if rudder:
                message["request_ip"] = visitor.ip
        return message

    def _page(self, visitor: _Visitor) -> _Made:
        name = self._rng.choice(("Home", "Blog", "Pricing", "Docs", "Product"))
        path = "/" if name == "Home" else f"/{name.lower()}"
        message = self._message(visitor, "page", path, f"{name} | Acme", name=name)
        message["properties"] = {
            "path": path,
            "referrer": message["context"]["page"]["referrer"],
            "title": f"{name} | Acme",
            "url": message["context"]["page"]["url"],
        }
        return message, ()

    def _identify(self, visitor: _Visitor) -> _Made:
        traits = {"email": self._lead_email(visitor), "phone": visitor.phone}
        return self._message(visitor, "identify", "/account", "Account | Acme", traits=traits), ()

    def _tracked(
        self,
        event: str,
        tiktok_event: str | None,
        properties: Callable[[_Visitor], dict[str, Any]],
    ) -> Callable[[_Visitor], _Made]:
        def make(visitor: _Visitor) -> _Made:
            path = "/" + event.lower().replace(" ", "-")
            message = self._message(
                visitor,
                "track",
                path,
                f"{event} | Acme",
                event=event,
                properties=properties(visitor),
            )
            return message, (tiktok_event,) if tiktok_event else ()

        return make

    def _product_fields(self, item: _Item) -> dict[str, Any]:
        return {
            "product_id": f"p-{item.sku[4:]}",
            "sku": item.sku,
            "name": item.name,
            "category": item.category,
            "brand": item.brand,
            "price": item.price,
            "quantity": item.quantity,
        }

    def _one_product(self, visitor: _Visitor) -> dict[str, Any]:
        item = self._item()
        properties = {**self._product_fields(item), "currency": self._currency()}
        if self._rng.random() < 0.5:
            properties["value"] = round(item.price * item.quantity, 2)
        return properties

    def _products(self, visitor: _Visitor) -> dict[str, Any]:
        items = self._items()
        revenue = round(sum(i.price * i.quantity for i in items), 2)
        return {
            "order_id": f"ord-{self._rng.getrandbits(32):08x}",
            "revenue": revenue,
            "total": round(revenue + 5, 2),
            "shipping": 5,
            "currency": self._currency(),
            "products": [self._product_fields(i) for i in items],
        }

    def _search(self, visitor: _Visitor) -> dict[str, Any]:
        query = self._rng.choice(("waterproof jacket", "boots", "laptop bag", "gift card"))
        return {"query": query}

    def _payment(self, visitor: _Visitor) -> dict[str, Any]:
        order = f"ord-{self._rng.getrandbits(32):08x}"
        method = self._rng.choice(("Card", "PayPal", "Apple Pay"))
        return {"checkout_id": order, "order_id": order, "step": 3, "payment_method": method}

    def _signed_up(self, visitor: _Visitor) -> dict[str, Any]:
        return {
            "type": self._rng.choice(("organic", "referral", "paid")),
            "email": self._lead_email(visitor),
            "phone": visitor.phone,
        }

    def _form(self, visitor: _Visitor) -> dict[str, Any]:
        form_id, name, _ = self._rng.choice(_FORMS)
        return {"form_id": form_id, "form_name": name, "email": self._lead_email(visitor)}

    def _trial(self, visitor: _Visitor) -> dict[str, Any]:
        return {"trial_plan_name": self._rng.choice(("Pro", "Team", "Business"))}

    def _subscription(self, visitor: _Visitor) -> dict[str, Any]:
        plan, value = self._rng.choice((("Pro monthly", 20), ("Pro annual", 240)))
        return {"plan_name": plan, "value": value, "currency": self._currency()}

    def _button(self, visitor: _Visitor) -> dict[str, Any]:
        button_id, text, section = self._rng.choice(_BUTTONS)
        return {"button_id": button_id, "text": text, "location": section}


_SNOWPLOW: Final = "com.snowplowanalytics.snowplow"
_IAB: Final = "contexts_com_iab_snowplow_spiders_and_robots_1"
_BOT_AGENT: Final = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class SnowplowGenerator(_PresetShapeGenerator):
    """Snowplow enriched events as the Analytics SDKs write them in JSON: page views and
    pings, structured events, Snowplow's own self-describing events and legacy ecommerce,
    and a few events the IAB enrichment flags as robots (filtered)."""

    SHAPE = "snowplow"

    def _key(self, visitor: _Visitor) -> str:
        return _visitor_uuid(visitor)

    def _makers(self) -> tuple[tuple[Callable[[_Visitor], _Made], int], ...]:
        return (
            (self._page_view, 34),
            (self._page_ping, 12),
            (self._struct, 8),
            (self._self_describing("link_click", None), 4),
            (self._self_describing("submit_form", "Lead"), 6),
            (self._self_describing("button_click", "ClickButton"), 8),
            (self._self_describing("site_search", "Search"), 6),
            (self._self_describing("add_to_cart", "AddToCart"), 8),
            (self._transaction, 3),
            (self._transaction_item, 5),
        )

    def records(self, count: int) -> Iterator[SampleRecord]:
        for record in super().records(count):
            if self._rng.random() < 0.02:
                # The IAB enrichment flagged the visitor as a robot: the preset filters it.
                document = orjson.loads(record.value)
                document["useragent"] = _BOT_AGENT
                document[_IAB] = [
                    {
                        "spiderOrRobot": True,
                        "category": "SPIDER_OR_ROBOT",
                        "reason": "FAILED_UA_INCLUDE",
                        "primaryImpact": "UNKNOWN",
                    }
                ]
                yield SampleRecord(
                    record.kind, record.topic, record.key, orjson.dumps(document), None
                )
            else:
                yield record

    def _event(
        self, visitor: _Visitor, kind: str, name: str, path: str, *, vendor: str = _SNOWPLOW
    ) -> dict[str, Any]:
        rng = self._rng
        ms = self._next_ms()
        url, referrer = self._url(path, rng.random() < 0.12)
        event: dict[str, Any] = {
            "app_id": "shop",
            "platform": "web",
            "etl_tstamp": self._iso(ms + 900),
            "collector_tstamp": self._iso(ms + 250),
            "dvce_created_tstamp": self._iso(ms),
            "event": kind,
            "event_id": self._uuid(),
            "name_tracker": "sp1",
            "v_tracker": "js-3.24.2",
            "v_collector": "ssc-3.2.0-kinesis",
            "v_etl": "snowplow-enrich-kinesis-5.1.0",
            "user_ipaddress": visitor.ip,
            "domain_userid": _visitor_uuid(visitor),
            "domain_sessionidx": rng.randrange(1, 30),
            "page_url": url,
            "page_title": f"{path.strip('/').title() or 'Home'} | Acme",
            "page_referrer": referrer,
            "page_urlhost": "shop.example.com",
            "page_urlpath": path,
            "useragent": visitor.user_agent,
            "br_lang": visitor.locale,
            "dvce_sent_tstamp": self._iso(ms + 5),
            "derived_tstamp": self._iso(ms - 3),
            "event_vendor": vendor,
            "event_name": name,
            "event_format": "jsonschema",
            "event_version": "1-0-0",
            "contexts_com_snowplowanalytics_snowplow_web_page_1": [{"id": self._uuid()}],
            _IAB: [
                {
                    "spiderOrRobot": False,
                    "category": "BROWSER",
                    "reason": "PASSED_ALL",
                    "primaryImpact": "NONE",
                }
            ],
        }
        if visitor.user_id is not None:
            event["user_id"] = visitor.user_id
        return event

    def _page_view(self, visitor: _Visitor) -> _Made:
        path = self._rng.choice(("/", "/blog", "/pricing", "/p/1", "/docs"))
        return self._event(visitor, "page_view", "page_view", path), ()

    def _page_ping(self, visitor: _Visitor) -> _Made:
        event = self._event(visitor, "page_ping", "page_ping", "/blog")
        event.update(pp_xoffset_min=0, pp_xoffset_max=0, pp_yoffset_min=0, pp_yoffset_max=1200)
        return event, ()

    def _struct(self, visitor: _Visitor) -> _Made:
        event = self._event(visitor, "struct", "event", "/blog", vendor="com.google.analytics")
        category, action = self._rng.choice((("video", "play"), ("nav", "open-menu")))
        event.update(se_category=category, se_action=action, se_label="header", se_value=0)
        return event, ()

    def _self_describing(self, name: str, tiktok_event: str | None) -> Callable[[_Visitor], _Made]:
        def make(visitor: _Visitor) -> _Made:
            event = self._event(visitor, "unstruct", name, f"/{name.replace('_', '-')}")
            event[f"unstruct_event_com_snowplowanalytics_snowplow_{name}_1"] = self._data(name)
            return event, (tiktok_event,) if tiktok_event else ()

        return make

    def _data(self, name: str) -> dict[str, Any]:
        rng = self._rng
        if name == "add_to_cart":
            item = self._item()
            return {
                "sku": item.sku,
                "name": item.name,
                "category": item.category,
                "unitPrice": item.price,
                "quantity": item.quantity,
                "currency": self._currency(),
            }
        if name == "submit_form":
            form_id, _, _ = rng.choice(_FORMS)
            return {"formId": form_id, "formClasses": ["form"], "elements": []}
        if name == "site_search":
            terms = rng.choice((["waterproof", "jacket"], ["boots"], ["laptop bag"]))
            return {"terms": terms, "filters": {}, "totalResults": rng.randrange(0, 80)}
        if name == "button_click":
            button_id, text, _ = rng.choice(_BUTTONS)
            return {"label": text, "id": button_id, "classes": ["btn"]}
        return {"targetUrl": "https://example.org/partner", "elementId": "partner-link"}

    def _transaction(self, visitor: _Visitor) -> _Made:
        event = self._event(visitor, "transaction", "transaction", "/checkout/done")
        items = self._items()
        total = round(sum(i.price * i.quantity for i in items) + 5, 2)
        event.update(
            tr_orderid=f"ord-{self._rng.getrandbits(32):08x}",
            tr_affiliation="Acme Store",
            tr_total=total,
            tr_tax=0,
            tr_shipping=5,
            tr_currency=self._currency(),
        )
        return event, ("Purchase",)

    def _transaction_item(self, visitor: _Visitor) -> _Made:
        event = self._event(visitor, "transaction_item", "transaction_item", "/checkout/done")
        item = self._item()
        event.update(
            ti_orderid=f"ord-{self._rng.getrandbits(32):08x}",
            ti_sku=item.sku,
            ti_name=item.name,
            ti_category=item.category,
            ti_price=item.price,
            ti_quantity=item.quantity,
            ti_currency=self._currency(),
        )
        return event, ()


#: GA4's events that preset ga4 maps, and the TikTok event of each.
_GA4_EVENTS: Final = {
    "view_item": "ViewContent",
    "search": "Search",
    "view_search_results": "Search",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "begin_checkout": "InitiateCheckout",
    "add_payment_info": "AddPaymentInfo",
    "purchase": "Purchase",
    "sign_up": "CompleteRegistration",
    "generate_lead": "Lead",
}


class Ga4Generator(_PresetShapeGenerator):
    """GA4 Measurement Protocol bodies of one to three events, as a server-side relay sends
    them; some visitors' user data is SHA-256 already, some plain, and a few bodies carry
    a consent refusal (filtered)."""

    SHAPE = "ga4"

    def _key(self, visitor: _Visitor) -> str:
        return self._client_id(visitor)

    def _makers(self) -> tuple[tuple[Callable[[_Visitor], _Made], int], ...]:
        sequences: tuple[tuple[tuple[str, ...], int], ...] = (
            (("page_view",), 24),
            (("session_start", "page_view"), 6),
            (("page_view", "view_item"), 16),
            (("view_item_list",), 5),
            (("view_item", "add_to_cart"), 6),
            (("add_to_cart",), 6),
            (("add_to_wishlist",), 2),
            (("begin_checkout",), 3),
            (("begin_checkout", "add_payment_info"), 3),
            (("view_item", "add_to_cart", "begin_checkout"), 2),
            (("purchase",), 3),
            (("view_search_results",), 4),
            (("search",), 2),
            (("sign_up",), 3),
            (("generate_lead",), 3),
            (("login",), 2),
        )
        return tuple((self._body(names), weight) for names, weight in sequences)

    @staticmethod
    def _client_id(visitor: _Visitor) -> str:
        # The _ga cookie's value: a random number and the time of the first visit.
        number = int(visitor.anonymous_id[5:], 16)
        return f"{number % 2**31}.{1_767_000_000 + number % 86_400}"

    def _body(self, names: tuple[str, ...]) -> Callable[[_Visitor], _Made]:
        def make(visitor: _Visitor) -> _Made:
            rng = self._rng
            ms = self._next_ms()
            micros = int(ms * 1000)
            body: dict[str, Any] = {
                "client_id": self._client_id(visitor),
                # GA4 reads an int64 as a number, and as the text relays often write.
                "timestamp_micros": micros if rng.random() < 0.9 else str(micros),
                "ip_override": visitor.ip,
                "user_agent": visitor.user_agent,
                "device": {"category": "desktop", "language": visitor.locale.lower()},
            }
            if visitor.user_id is not None:
                body["user_id"] = visitor.user_id
            consent = rng.random()
            denied = consent < 0.05
            if consent < 0.9:
                state = "DENIED" if denied else "GRANTED"
                body["consent"] = {"ad_user_data": state, "ad_personalization": state}
            user_data = self._user_data(visitor)
            if user_data:
                body["user_data"] = user_data
            body["events"] = [self._ga4_event(name, ms) for name in names]
            if denied:
                return body, ()
            return body, tuple(_GA4_EVENTS[n] for n in names if n in _GA4_EVENTS)

        return make

    def _user_data(self, visitor: _Visitor) -> dict[str, Any]:
        if visitor.email is None:
            return {}
        form = self._rng.random()
        if form < 0.5:
            # Hashed by the relay, as the Measurement Protocol wants it.
            data: dict[str, Any] = {
                "sha256_email_address": [_sha256(pii.normalize_email(visitor.email))]
            }
            if visitor.phone is not None:
                number = pii.normalize_phone(visitor.phone, "US")
                data["sha256_phone_number"] = [_sha256(number)]
            return data
        if form < 0.7:
            return {"email": visitor.email, "phone_number": visitor.phone}
        return {}

    def _ga4_event(self, name: str, ms: float) -> dict[str, Any]:
        rng = self._rng
        path = {"purchase": "/checkout/done", "sign_up": "/signup/done"}.get(name, f"/{name}")
        url, referrer = self._url(path, rng.random() < 0.12)
        params: dict[str, Any] = {
            "session_id": str(int(ms // 1000) - 600),
            "engagement_time_msec": rng.randrange(100, 20000),
            "page_location": url,
            "page_referrer": referrer,
        }
        if name in ("view_item", "add_to_cart", "add_to_wishlist", "begin_checkout",
                    "add_payment_info", "purchase", "view_item_list"):  # fmt: skip
            items = [self._item()] if name in ("view_item", "add_to_wishlist") else self._items()
            params["currency"] = self._currency()
            params["value"] = round(sum(i.price * i.quantity for i in items), 2)
            params["items"] = [
                {
                    "item_id": i.sku,
                    "item_name": i.name,
                    "item_category": i.category,
                    "item_brand": i.brand,
                    "price": i.price,
                    "quantity": i.quantity,
                }
                for i in items
            ]
        if name == "purchase":
            order = f"ord-{rng.getrandbits(32):08x}"
            params["transaction_id"] = order
            params["event_id"] = f"purchase-{order}"  # the pixel's id for the same purchase
        elif name == "add_payment_info":
            params["payment_type"] = rng.choice(("Credit Card", "PayPal"))
        elif name in ("search", "view_search_results"):
            params["search_term"] = rng.choice(("waterproof jacket", "boots", "gift card"))
        elif name in ("sign_up", "login"):
            params["method"] = rng.choice(("Google", "email", "Apple"))
        elif name == "generate_lead":
            params.update(currency="USD", value=rng.choice((0, 500)), lead_source="contact-form")
        return {"name": name, "params": params}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: The generator of each shape of :data:`SHAPES`.
GENERATORS: Final[Mapping[str, type[_Generator]]] = {
    "clickstream": ClickstreamGenerator,
    "segment": SegmentGenerator,
    "snowplow": SnowplowGenerator,
    "ga4": Ga4Generator,
}


def expected_counts(records: list[SampleRecord]) -> Counter[str]:
    """Per-event counts the example configuration (or, for a preset's shape, a mapping
    naming the preset) should deliver for ``records``."""
    return Counter(event for r in records for event in r.expected_events)


def generate(
    count: int,
    *,
    seed: int,
    start: float,
    topics: Mapping[str, str] | None = None,
    shape: str = "clickstream",
) -> tuple[list[SampleRecord], Counter[str]]:
    """``count`` sample records of ``shape`` (one of :data:`SHAPES`) and the per-event
    counts they should become. ``topics`` maps record kinds (for a preset's shape, the
    shape's name) to the topics to write them to."""
    generator = GENERATORS[shape](seed=seed, start=start, topics=dict(topics or {}))
    records = list(generator.records(count))
    return records, expected_counts(records)
