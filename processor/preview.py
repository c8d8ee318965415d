"""The Payload Helper: what the processor would send for given records, offline.

Feeds records through the same :class:`~processor.transform.Transformer` as
``run`` and prints, per record, the exact request body, or why the record was
filtered or rejected (stage, mapping and field). No broker, no network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from processor.matchkeys import key_names
from processor.payload import BatchKey, batch_key, request_body
from processor.transform import Transformer


@dataclass(frozen=True, slots=True)
class PreviewLine:
    """One printed outcome: a request body, a filter, or a rejection."""

    line: int
    outcome: str  # "mapped" | "filtered" | "rejected"
    body: dict[str, Any] | None = None
    mappings: tuple[str, ...] = ()
    stage: str | None = None
    reason: str | None = None
    #: (field, reason) of each value left out of the events of a mapped line.
    dropped: tuple[tuple[str, str], ...] = ()
    #: The match keys of each event of a mapped line's body, in its order.
    match_keys: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "outcome": self.outcome}
        if self.mappings:
            out["mappings"] = list(self.mappings)
        if self.body is not None:
            out["body"] = self.body
        if self.stage is not None:
            out["stage"] = self.stage
        if self.reason is not None:
            out["reason"] = self.reason
        if self.dropped:
            out["dropped"] = [{"field": f, "reason": r} for f, r in self.dropped]
        if self.body is not None:
            out["match_keys"] = [list(key_names(keys)) for keys in self.match_keys]
        return out


def split_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """JSON lines, or a whole file holding one JSON object (or an array of them).

    Yields ``(line number, record bytes)``; an array's items are numbered from 1.
    """
    stripped = data.strip()
    if stripped[:1] in (b"{", b"["):
        try:
            whole = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            yield 1, stripped
            return
        if isinstance(whole, list):
            for i, item in enumerate(whole, start=1):
                yield i, orjson.dumps(item)
            return
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            yield number, line


def preview(
    transformer: Transformer,
    topic: str,
    data: bytes,
    partner_name: str | None = None,
) -> Iterator[PreviewLine]:
    """Outcomes for every record in ``data``; the line number stands in for the offset."""
    for number, raw in split_records(data):
        result = transformer.transform(topic, 0, number - 1, raw)
        if result.filtered:
            plan = transformer.plan(topic)
            names = tuple(m.name for m in plan.mappings) if plan is not None else ()
            reason = "no mapping's `when` rule matched"
            yield PreviewLine(number, "filtered", mappings=names, reason=reason)
            continue
        groups: dict[BatchKey, list[Any]] = {}
        for event in result.events:
            groups.setdefault(batch_key(event), []).append(event)
        for key, events in groups.items():
            body = request_body(key, (e.payload for e in events), partner_name)
            names = tuple(e.mapping for e in events)
            dropped = tuple(d for e in events for d in e.dropped)
            keys = tuple(e.match_keys for e in events)
            yield PreviewLine(
                number, "mapped", body=body, mappings=names, dropped=dropped, match_keys=keys
            )
        for rejection in result.rejected:
            yield PreviewLine(
                number,
                "rejected",
                mappings=(rejection.mapping,) if rejection.mapping else (),
                stage=str(rejection.stage),
                reason=rejection.reason,
            )
