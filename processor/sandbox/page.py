"""The sandbox's Test Events page: ``GET /`` and the feed it polls, ``GET /sandbox/feed``.

Owns the page (``static/test_events.html``, plain HTML, CSS and JS with nothing fetched
from elsewhere, served with a Content-Security-Policy that allows only its own inline
script and style and requests to the sandbox) and the feed: the newest events the
sandbox received, newest first, each with its name, times, pixel, test event code, match
keys and what became of it:

* ``first_seen``: accepted and stored;
* ``duplicate``: dropped as a repeat of an earlier event + event_id (TikTok's dedup);
* ``rejected``: in a request the sandbox refused, with TikTok's code and message (or the
  HTTP status of an injected gateway fault, or the dropped connection).

The feed is built only when asked, from what the store keeps anyway (its chunks of
documents and its notes of duplicates and refusals), and bounded: at most ``FEED_LIMIT``
events an answer, at most ``MAX_RECENT_BODIES`` request bodies decoded, and decoding
happens outside the sandbox's lock. A ``cursor`` (``generation.seq.note``, handed back by
every answer) asks only for what arrived since: on a sandbox holding a million events
(1,000-event requests) the first answer takes about 2 ms and a poll with nothing new
well under one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any, Protocol

import orjson

from processor.matchkeys import MATCH_KEYS as PROCESSOR_MATCH_KEYS
from processor.sandbox.state import Reply
from processor.sandbox.store import (
    MAX_RECENT_BODIES,
    OTHER,
    DuplicateNote,
    Recent,
    RefusalNote,
    Selection,
)

PAGE_PATH = "/"
FEED_PATH = "/sandbox/feed"

#: Most events one feed answer holds (and the page keeps).
FEED_LIMIT = 500

#: The identifiers TikTok matches on, named and ordered as the processor's summaries
#: name them (:data:`processor.matchkeys.MATCH_KEYS`); ``ip+ua`` counts only when both
#: ``ip`` and ``user_agent`` are there (TikTok matches on the pair).
MATCH_KEYS = tuple(name for _, name in PROCESSOR_MATCH_KEYS)
_SINGLE_KEYS = MATCH_KEYS[:-1]

#: Pixels, event names and test codes offered as filters (from the store's counters).
MAX_OPTIONS = 200

#: Longest client string (event name, pixel, event_id, message) a feed row carries.
_MAX_TEXT = 200

_SCOPES = frozenset({"all", "live", "test"})
_DROPPED_MESSAGE = "connection closed without an answer (injected fault)"

#: Order keys: newest first is descending. A stored event is (seq, 0, 0, 0); a note is
#: (the seq stored before it, 1, its number, its index in its request): a note is newer
#: than every event stored up to its seq and older than every one stored after.
_OrderKey = tuple[int, int, int, int]
_PAST_ANY_INDEX = 1 << 62


class FeedSource(Protocol):
    """Where the feed comes from: :class:`~processor.sandbox.state.SandboxState`."""

    def recent(self, **filters: Any) -> tuple[int, Recent, dict[str, Any]]: ...


def match_keys(user: object) -> list[str]:
    """The match keys a ``user`` object carries, non-empty (a list counts when any of its
    items is non-empty). Stricter than the processor's bit set, which judges events it
    normalised itself: here any client's document is judged, so blank text is absent."""
    if not isinstance(user, dict):
        return []
    keys = [key for key in _SINGLE_KEYS if _present(user.get(key))]
    if _present(user.get("ip")) and _present(user.get("user_agent")):
        keys.append(MATCH_KEYS[-1])
    return keys


def _present(value: object) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):
        return any(_present(item) for item in value)
    return False


# -- the page -----------------------------------------------------------------------------


@functools.cache
def page_reply() -> Reply:
    """The page, read from the package once, with its security headers."""
    html = resources.files("processor.sandbox").joinpath("static/test_events.html").read_bytes()
    return Reply(
        body=html,
        content_type="text/html; charset=utf-8",
        headers=(
            ("Content-Security-Policy", content_security_policy(html)),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-store"),
        ),
    )


def content_security_policy(html: bytes) -> str:
    """A policy allowing exactly the page's inline scripts and styles (by hash) and
    requests to the sandbox itself: nothing else loads, even if a row's text were
    mistaken for markup."""
    scripts = " ".join(_hashes(html, b"script"))
    styles = " ".join(_hashes(html, b"style"))
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _hashes(html: bytes, tag: bytes) -> list[str]:
    pattern = re.compile(rb"<" + tag + rb">(.*?)</" + tag + rb">", re.DOTALL)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(block).digest()).decode() + "'"
        for block in pattern.findall(html)
    ]


# -- the feed -----------------------------------------------------------------------------


def feed(state: FeedSource, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """The feed for ``GET /sandbox/feed?cursor=&limit=&pixel=&event=&test_event_code=
    &scope=all|live|test``: ``{"cursor", "reset", "events" (newest first), "truncated",
    "totals", "options"}``. ``reset`` means the page must drop what it holds (no cursor,
    or one from before a reset of the sandbox). Raises ValueError on a bad parameter."""
    limit = _limit(_one(query, "limit"))
    scope = _one(query, "scope") or "all"
    if scope not in _SCOPES:
        raise ValueError("scope must be all, live or test")
    cursor = _cursor(_one(query, "cursor"))
    filters = {
        "pixel": _one(query, "pixel") or None,
        "event": _one(query, "event") or None,
        "test_event_code": _one(query, "test_event_code") or None,
        "scope": scope,
    }
    after_seq, after_note = (cursor[1], cursor[2]) if cursor else (0, 0)
    generation, recent, counts = state.recent(
        after_seq=after_seq, after_note=after_note, limit=limit, **filters
    )
    reset = cursor is None or cursor[0] != generation
    if reset and cursor is not None:  # a cursor of the store before a reset: start again
        after_seq, after_note = 0, 0
        generation, recent, counts = state.recent(limit=limit, **filters)
    # Everything below decodes, outside the lock: the selections and notes are immutable
    # (a duplicate note's events are decoded dicts that nothing else holds any more).
    rows: list[tuple[_OrderKey, dict[str, Any]]] = []
    for selection in recent.selections:
        rows.extend(_stored_rows(selection))
    for repeats in recent.duplicates:
        rows.extend(_duplicate_rows(repeats, after_note, filters["event"]))
    # Rows older than the floor are left out: past it, what was read stops short.
    floor: _OrderKey = (recent.oldest_seq, 0, 0, 0) if recent.truncated else (0, 0, 0, 0)
    refused: list[tuple[_OrderKey, dict[str, Any]]] = []
    for decoded, note in enumerate(recent.refusals):
        if len(refused) >= limit:
            break
        if decoded >= MAX_RECENT_BODIES:
            floor = max(floor, (note.after_seq, 1, note.number, _PAST_ANY_INDEX))
            break
        refused.extend(_refused_rows(note, filters))
    rows.extend(refused)
    rows = [row for row in rows if row[0] >= floor]
    rows.sort(key=lambda row: row[0], reverse=True)
    return {
        "cursor": f"{generation}.{recent.seq}.{recent.notes}",
        "reset": reset,
        "limit": limit,
        "truncated": floor != (0, 0, 0, 0) or len(rows) > limit,
        "events": [row for _, row in rows[:limit]],
        "totals": _totals(counts),
        "options": _options(counts),
    }


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _limit(text: str | None) -> int:
    if text is None:
        return FEED_LIMIT
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError("limit must be a positive integer")
    return min(int(text), FEED_LIMIT)


def _cursor(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() and len(p) <= 18 for p in parts):
        raise ValueError("cursor must be what the last answer's cursor was")
    generation, seq, note = map(int, parts)
    return generation, seq, note


def _stored_rows(selection: Selection) -> list[tuple[_OrderKey, dict[str, Any]]]:
    request = {
        "pixel": selection.pixel,
        "event_source": selection.event_source,
        "test_event_code": selection.test_event_code,
        "request_id": selection.request_id,
        "received_at": selection.received_at,
    }
    return [
        ((seq, 0, 0, 0), _row(f"e{seq}", "first_seen", document, request))
        for seq, document in selection.documents()
    ]


def _duplicate_rows(
    note: DuplicateNote, after_note: int, event: str | None
) -> list[tuple[_OrderKey, dict[str, Any]]]:
    request = {
        "pixel": note.pixel,
        "event_source": note.event_source,
        "test_event_code": note.test_event_code,
        "request_id": note.request_id,
        "received_at": note.received_at,
    }
    rows = []
    for number, document in enumerate(note.events, start=note.first_number):
        if number > after_note and (event is None or document.get("event") == event):
            row = _row(f"d{number}", "duplicate", document, request)
            rows.append(((note.after_seq, 1, number, 0), row))
    return rows


def _refused_rows(
    note: RefusalNote, filters: Mapping[str, str | None]
) -> list[tuple[_OrderKey, dict[str, Any]]]:
    """A refused request's events, each with TikTok's answer (one row without an event
    when its body holds none), if the request passes the filters."""
    body = _decode_object(note.body)
    pixel = _text(body.get("event_source_id"))
    code = _text(body.get("test_event_code"))
    scope = filters["scope"]
    if (
        (filters["pixel"] is not None and pixel != filters["pixel"])
        or (filters["test_event_code"] is not None and code != filters["test_event_code"])
        or (scope == "live" and code is not None)
        or (scope == "test" and code is None)
    ):
        return []
    request = {
        "pixel": pixel,
        "event_source": _text(body.get("event_source")),
        "test_event_code": code,
        "request_id": note.request_id,
        "received_at": note.received_at,
        **_answer(note),
    }
    data = body.get("data")
    documents = [d if isinstance(d, dict) else {} for d in data] if isinstance(data, list) else []
    wanted = filters["event"]
    rows = []
    for index, document in enumerate(documents or [{}]):
        row = _row(f"r{note.number}.{index}", "rejected", document, request)
        if wanted is None or row["event"] == wanted:
            rows.append(((note.after_seq, 1, note.number, index), row))
    return rows


def _answer(note: RefusalNote) -> dict[str, Any]:
    """What the sandbox answered: TikTok's code and message, or the HTTP fault."""
    if note.dropped:
        return {"code": None, "http_status": None, "message": _DROPPED_MESSAGE}
    if note.status != 200:
        message = note.reply.decode("utf-8", "replace").strip()
        return {"code": None, "http_status": note.status, "message": message[:_MAX_TEXT]}
    envelope = _decode_object(note.reply)
    return {
        "code": None if note.code is None else int(note.code),
        "http_status": None,
        "message": _text(envelope.get("message"), limit=1000),
    }


def _row(
    key: str, status: str, document: dict[str, Any], request: Mapping[str, Any]
) -> dict[str, Any]:
    event_time = document.get("event_time")
    return {
        "key": key,
        "status": status,
        "event": _text(document.get("event")),
        "event_id": _text(document.get("event_id")),
        "event_time": event_time
        if isinstance(event_time, int | float) and not isinstance(event_time, bool)
        else None,
        "match_keys": match_keys(document.get("user")),
        "code": None,
        "http_status": None,
        "message": None,
        **request,
    }


def _text(value: object, limit: int = _MAX_TEXT) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _decode_object(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _totals(counts: Mapping[str, Any]) -> dict[str, int]:
    live, test = counts["events"], counts["test_events"]
    return {
        "received": live["received"] + test["received"],
        "accepted": live["accepted"] + test["accepted"],
        "duplicates": live["duplicates"] + test["duplicates"],
        "refused_requests": counts["refused_requests"],
    }


def _options(counts: Mapping[str, Any]) -> dict[str, list[str]]:
    live, test = counts["events"], counts["test_events"]

    def names(*counters: Mapping[str, int]) -> list[str]:
        found = {name for counter in counters for name in counter if name != OTHER}
        return sorted(found)[:MAX_OPTIONS]

    return {
        "pixels": names(live["by_pixel"], test["by_pixel"]),
        "events": names(live["by_event"], test["by_event"]),
        "test_event_codes": names(test["by_test_code"]),
    }
