"""Match keys: which of TikTok's customer-information keys an event carries.

TikTok attributes a server event to a person by the identifiers in its ``user``
object; the more of them an event has, the more of the events it matches (Events
Manager shows the same as "match quality"). The keys counted here are ``email``,
``phone``, ``external_id``, ``ttclid``, ``ttp`` and ``ip`` with ``user_agent`` (the
two only match together). An event's keys are a small bit set, computed once when
the event is mapped and carried with it until TikTok accepts it, where
``…_match_keys_total{pixel,event,key}`` counts them (``key="none"``: an event with
none of them).

:class:`MatchSummary` adds up the keys of many events for ``preview`` and
``match-report``: ``ViewContent: 1,000 events, email 12 %, ttclid 64 %, ip+ua 100 %``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

#: (label in metrics, name in summaries) of each key, in the order of the bits.
MATCH_KEYS: Final = (
    ("email", "email"),
    ("phone", "phone"),
    ("external_id", "external_id"),
    ("ttclid", "ttclid"),
    ("ttp", "ttp"),
    ("ip_user_agent", "ip+ua"),
)
#: The ``key`` label of an event with no match key at all.
NO_KEY: Final = "none"


def match_keys(user: Mapping[str, Any] | None) -> int:
    """The keys of an event's ``user`` object, as bits (0: none). A key counts when its
    value is there and not empty (the mapping leaves out what it could not normalise)."""
    if not user:
        return 0
    # Unrolled (once per event, on the hot path): the bits of MATCH_KEYS, in order.
    get = user.get
    keys = 0
    if get("email"):
        keys = 1
    if get("phone"):
        keys |= 2
    if get("external_id"):
        keys |= 4
    if get("ttclid"):
        keys |= 8
    if get("ttp"):
        keys |= 16
    if get("ip") and get("user_agent"):
        keys |= 32
    return keys


def key_labels(keys: int) -> tuple[str, ...]:
    """The metric labels of ``keys`` (``("none",)`` for an event with none)."""
    labels = tuple(label for bit, (label, _) in enumerate(MATCH_KEYS) if keys >> bit & 1)
    return labels or (NO_KEY,)


def key_names(keys: int) -> tuple[str, ...]:
    """The names of ``keys`` as summaries write them (empty for an event with none)."""
    return tuple(name for bit, (_, name) in enumerate(MATCH_KEYS) if keys >> bit & 1)


@dataclass
class _EventTally:
    events: int = 0
    without_keys: int = 0
    by_key: list[int] = field(default_factory=lambda: [0] * len(MATCH_KEYS))


@dataclass
class MatchSummary:
    """The match keys of many events, by event name."""

    by_event: dict[str, _EventTally] = field(default_factory=dict)

    def add(self, event: str, keys: int) -> None:
        tally = self.by_event.get(event)
        if tally is None:
            tally = self.by_event[event] = _EventTally()
        tally.events += 1
        if not keys:
            tally.without_keys += 1
        for bit in range(len(MATCH_KEYS)):
            if keys >> bit & 1:
                tally.by_key[bit] += 1

    def add_counts(self, event: str, events: int, by_label: Mapping[str, int]) -> None:
        """Add ``events`` events of which ``by_label[label]`` carried each key (the labels
        of ``…_match_keys_total``; ``none`` for those with no key): a summary from metrics."""
        tally = self.by_event.setdefault(event, _EventTally())
        tally.events += events
        tally.without_keys += by_label.get(NO_KEY, 0)
        for bit, (label, _) in enumerate(MATCH_KEYS):
            tally.by_key[bit] += by_label.get(label, 0)

    @property
    def events(self) -> int:
        return sum(t.events for t in self.by_event.values())

    def lines(self) -> Iterator[str]:
        """One line an event name, most frequent first; a key no event had is left out.
        ``ViewContent: 1,000 events, email 12 %, ttclid 64 %, ip+ua 100 %``"""
        for event, tally in sorted(self.by_event.items(), key=lambda kv: (-kv[1].events, kv[0])):
            parts = [f"{tally.events:,} event{'s' if tally.events != 1 else ''}"]
            parts += [
                f"{name} {_percent(count, tally.events)}"
                for (_, name), count in zip(MATCH_KEYS, tally.by_key, strict=True)
                if count
            ]
            if tally.without_keys:
                parts.append(f"no match key {_percent(tally.without_keys, tally.events)}")
            yield f"{event}: {', '.join(parts)}"

    def as_json(self) -> dict[str, Any]:
        """``{event: {events, keys: {name: share}, none: share}}``, shares from 0 to 1."""
        return {
            event: {
                "events": tally.events,
                "keys": {
                    name: round(count / tally.events, 4)
                    for (_, name), count in zip(MATCH_KEYS, tally.by_key, strict=True)
                },
                "none": round(tally.without_keys / tally.events, 4),
            }
            for event, tally in self.by_event.items()
        }


def _percent(count: int, total: int) -> str:
    share = 100 * count / total
    # 0.4 % is not "0 %", and 99.6 % is not "100 %": the ends say something.
    if 0 < share < 1:
        return "<1 %"
    if 99 < share < 100:
        return ">99 %"
    return f"{share:.0f} %"
