"""The TikTok ``/event/track/`` request body, built from mapped events.

One request names one event source (``event_source`` web, app, offline or crm, and
its ``event_source_id``: a pixel code, an app id or an event set id) and one test
event code (TikTok keeps test traffic apart), so those three values form the batch
key everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from processor.mapping import MappedEvent

#: TikTok rejects a request of more than 1,000 events (40061).
MAX_EVENTS_PER_REQUEST = 1000


class BatchKey(NamedTuple):
    """Events that may share a request."""

    event_source: str
    event_source_id: str
    test_event_code: str | None


def batch_key(event: MappedEvent) -> BatchKey:
    return BatchKey(event.event_source, event.event_source_id, event.test_event_code)


def request_body(
    key: BatchKey, payloads: Iterable[dict[str, Any]], partner_name: str | None = None
) -> dict[str, Any]:
    """The JSON body for ``payloads`` (``data[]`` entries) of one batch key."""
    body: dict[str, Any] = {
        "event_source": key.event_source,
        "event_source_id": key.event_source_id,
    }
    if key.test_event_code is not None:
        body["test_event_code"] = key.test_event_code
    if partner_name is not None:
        body["partner_name"] = partner_name
    body["data"] = list(payloads)
    return body


def encode_request(key: BatchKey, data: Sequence[bytes], partner_name: str | None = None) -> bytes:
    """:func:`request_body` as JSON, from ``data[]`` entries encoded already (each
    :attr:`MappedEvent.data`): the bytes ``orjson.dumps(request_body(...))`` gives."""
    head = orjson.dumps(request_body(key, (), partner_name))[:-2]  # … "data":[
    if not data:
        return head + b"]}"
    # One copy of the events (a body holds up to 1,000): the head and the tail join the
    # first and the last event, then everything is joined once.
    parts = list(data)
    parts[0] = head + parts[0]
    parts[-1] += b"]}"
    return b",".join(parts)
