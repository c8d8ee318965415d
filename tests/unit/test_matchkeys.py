"""Match keys: which identifiers an event carries, counted as TikTok will see them."""

from __future__ import annotations

import orjson
import pytest

from processor.matchkeys import MATCH_KEYS, NO_KEY, MatchSummary, key_labels, key_names, match_keys
from processor.transform import load_pipeline
from tests.conftest import CLICKSTREAM_EXAMPLES, EXAMPLE_CONFIG, EXAMPLES_NOW

IP, UA = "203.0.113.7", "Mozilla/5.0"


@pytest.mark.parametrize(
    ("user", "names"),
    [
        (None, ()),
        ({}, ()),
        ({"email": "a" * 64}, ("email",)),
        ({"phone": "b" * 64, "external_id": "c" * 64}, ("phone", "external_id")),
        ({"ttclid": "E.C.P.x", "ttp": "Qm4t"}, ("ttclid", "ttp")),
        ({"ip": IP, "user_agent": UA}, ("ip+ua",)),
        # ip or user_agent alone matches nothing; neither does an empty value or a locale.
        ({"ip": IP}, ()),
        ({"user_agent": UA, "email": "", "locale": "en-GB"}, ()),
        ({"email": ["a" * 64], "ip": IP, "user_agent": UA}, ("email", "ip+ua")),
    ],
)
def test_the_keys_of_a_user_object(user: dict[str, object] | None, names: tuple[str, ...]) -> None:
    keys = match_keys(user)
    assert key_names(keys) == names
    labels = key_labels(keys)
    assert labels == (tuple(label for label, name in MATCH_KEYS if name in names) or (NO_KEY,))


def test_a_summary_gives_each_events_share_of_each_key_most_frequent_first() -> None:
    summary = MatchSummary()
    email, ttclid = match_keys({"email": "x"}), match_keys({"ttclid": "y"})
    ip_ua = match_keys({"ip": IP, "user_agent": UA})
    for i in range(1000):
        keys = ip_ua
        keys |= email if i < 120 else 0
        keys |= ttclid if i < 640 else 0
        summary.add("ViewContent", keys)
    summary.add("Lead", 0)
    summary.add("Lead", email)
    for _ in range(998):
        summary.add("CompleteRegistration", email)
    summary.add("CompleteRegistration", 0)
    summary.add("CompleteRegistration", 0)
    # Most frequent first, then by name.
    assert list(summary.lines()) == [
        "CompleteRegistration: 1,000 events, email >99 %, no match key <1 %",
        "ViewContent: 1,000 events, email 12 %, ttclid 64 %, ip+ua 100 %",
        "Lead: 2 events, email 50 %, no match key 50 %",
    ]
    assert summary.events == 2002
    shares = summary.as_json()
    assert shares["ViewContent"]["keys"]["ttclid"] == 0.64
    assert shares["ViewContent"]["keys"]["phone"] == 0
    assert shares["Lead"]["none"] == 0.5


def test_a_mapped_event_carries_the_keys_of_what_it_sends() -> None:
    _, transformer, _ = load_pipeline(EXAMPLE_CONFIG, clock=lambda: EXAMPLES_NOW)
    record = orjson.loads((CLICKSTREAM_EXAMPLES / "sign_up.v1" / "email_signup.json").read_bytes())
    record["user"]["phone"] = "12"  # cannot be normalised: left out, so it is no key
    record["context"]["ip"] = "203.0.113"  # left out too: a user agent alone is no key
    record["page"]["url"] += "?ttclid=E.C.P.abc"
    result = transformer.transform("web.signups", 0, 0, orjson.dumps(record))
    assert not result.rejected, result.rejected
    (event,) = result.events
    assert sorted(field for field, _ in event.dropped) == ["user.ip", "user.phone"]
    assert key_names(event.match_keys) == ("email", "external_id", "ttclid")


def test_a_summary_from_metric_counts_reads_as_one_from_events() -> None:
    from_events = MatchSummary()
    for keys in (match_keys({"email": "x"}), 0, match_keys({"ip": IP, "user_agent": UA})):
        from_events.add("Lead", keys)
    from_metrics = MatchSummary()
    from_metrics.add_counts("Lead", 3, {"email": 1, "none": 1, "ip_user_agent": 1})
    assert list(from_metrics.lines()) == list(from_events.lines())
    assert from_metrics.as_json() == from_events.as_json()


def test_each_key_has_the_bit_of_its_place_in_match_keys() -> None:
    users = [{"email": "x"}, {"phone": "x"}, {"external_id": "x"}, {"ttclid": "x"}, {"ttp": "x"}]
    users.append({"ip": IP, "user_agent": UA})
    assert [match_keys(u) for u in users] == [1 << bit for bit in range(len(MATCH_KEYS))]
