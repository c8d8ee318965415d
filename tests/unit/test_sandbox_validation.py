"""The sandbox's body checks: the one-call fast path answers exactly as the ordered walk.

A body the compiled schema accepts is answered at once; any other is walked check by
check. These tests hold the two together: the fast path accepts nothing the walk
refuses, and a body with several problems still gets the code and message of the first
check it fails (40061, then 40062, then the source's rules, then the schema).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.sandbox.state import SandboxState, TrackRequest
from processor.sandbox.validation import Rejection, check_body
from processor.schemas import SCHEMAS_DIR, tiktok_request_predicate, tiktok_request_validator

EXAMPLES = sorted((SCHEMAS_DIR / "tiktok/examples/event_track.v1.3").glob("*.json"))
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
TOKEN = "tok-validation"


def walk(body: dict[str, Any]) -> Rejection | None:
    """The checks one by one, in order, without the fast path."""
    return check_body(body, tiktok_request_validator())


def judged(body: dict[str, Any]) -> Rejection | None:
    return check_body(body, tiktok_request_validator(), tiktok_request_predicate())


def example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(
        (SCHEMAS_DIR / f"tiktok/examples/event_track.v1.3/{name}.json").read_bytes()
    )
    return body


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``path`` to ``value`` (making objects on the way); KeyError where the body's
    shape does not have the path (an index into an object, a key into a list)."""

    def mutate(body: dict[str, Any]) -> None:
        node: Any = body
        for part, then in pairwise(path):
            node = _step(node, part, {} if isinstance(then, str) else [])
        if isinstance(node, dict) == isinstance(path[-1], int):
            raise KeyError(path[-1])
        node[path[-1]] = value

    return mutate


def _step(node: Any, part: Any, empty: Any) -> Any:
    if isinstance(node, dict) == isinstance(part, int):
        raise KeyError(part)
    return node.setdefault(part, empty) if isinstance(node, dict) else node[part]


#: One problem each, of every kind the checks tell apart.
MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no events": _set(("data",), []),
    "too many events": lambda b: b.update(data=b["data"] * 1001),
    "data not a list": _set(("data",), {"event": "Lead"}),
    "raw email": _set(("data", 0, "user", "email"), "jane.doe@example.com"),
    "raw phone in a list": _set(("data", 0, "user", "phone"), [SHA, "+447700900123"]),
    "upper-case digest": _set(("data", 0, "user", "external_id"), SHA.upper()),
    "digest with a newline": _set(("data", 0, "user", "email"), SHA + "\n"),
    "email a number": _set(("data", 0, "user", "email"), 5),
    "event_id a number": _set(("data", 0, "event_id"), 7),
    "event_time a string": _set(("data", 0, "event_time"), "1767225600"),
    "no event name": lambda b: b["data"][0].pop("event"),
    "unknown event field": _set(("data", 0, "colour"), "red"),
    "unknown top-level field": _set(("colour",), "red"),
    "bad currency": _set(("data", 0, "properties", "currency"), "XXX"),
    "bad pixel": _set(("event_source_id",), "lower-case"),
    "unknown source": _set(("event_source",), "email"),
    "lead on a web event": _set(("data", 0, "lead"), {"lead_id": "l-1"}),
    "page on an app event": lambda b: (
        b.update(event_source="app") or b["data"][0].update(page={"url": "https://x.example/"})
    ),
    "ttp on an offline event": lambda b: (
        b.update(event_source="offline") or b["data"][0].setdefault("user", {}).update(ttp="abc")
    ),
    "custom name offline": lambda b: (
        b.update(event_source="offline") or b["data"][0].update(event="MyEvent")
    ),
    "standard name for crm": lambda b: (
        b.update(event_source="crm") or b["data"][0].update(event="Purchase")
    ),
}


def bodies() -> list[tuple[str, dict[str, Any]]]:
    """Every example, with each problem alone and with each pair of problems."""
    found: list[tuple[str, dict[str, Any]]] = []
    names = list(MUTATIONS)
    for path in EXAMPLES:
        base = orjson.loads(path.read_bytes())
        found.append((path.stem, base))
        for i, first in enumerate(names):
            for second in [None, *names[i + 1 :]]:
                body = copy.deepcopy(base)
                try:
                    MUTATIONS[first](body)
                    if second is not None:
                        MUTATIONS[second](body)
                except (KeyError, TypeError, IndexError, AttributeError):
                    continue  # this pair does not apply to this example
                found.append((f"{path.stem}: {first} + {second}", body))
    return found


def test_the_fast_path_answers_every_body_as_the_walk_does() -> None:
    corpus = bodies()
    assert len(corpus) > 1000
    predicate = tiktok_request_predicate()
    for name, body in corpus:
        expected = walk(body)
        assert predicate(body) is (expected is None), name
        assert judged(body) == expected, name


@pytest.mark.parametrize(
    ("problems", "code", "says"),
    [
        (("too many events", "raw email"), 40061, "Invalid batch size"),
        (("raw email", "event_id a number"), 40062, "data[0].user.email"),
        (("raw email", "lead on a web event"), 40062, "data[0].user.email"),
        (("lead on a web event", "bad currency"), 40002, "data[0].lead: not allowed"),
        (("custom name offline", "event_time a string"), 40002, "takes standard events only"),
        (("bad currency", "event_id a number"), 40002, "Invalid value for data[0]"),
    ],
)
def test_a_body_with_several_problems_gets_the_first_checks_answer(
    problems: tuple[str, ...], code: int, says: str
) -> None:
    body = example("view_content")
    for problem in problems:
        MUTATIONS[problem](body)
    rejection = judged(body)
    assert rejection is not None
    assert rejection == walk(body)
    assert rejection.code == code
    assert says in rejection.message


def test_the_sandbox_answers_several_problems_as_the_walk_does() -> None:
    state = SandboxState(tokens=[TOKEN])
    for name, body in bodies()[::7]:
        reply = state.track(TrackRequest(token=TOKEN.encode(), body=orjson.dumps(body)))
        answer = orjson.loads(reply.body)
        expected = walk(body)
        if expected is None:
            assert answer["code"] == 0, name
        else:
            assert (answer["code"], answer["message"]) == (expected.code, expected.message), name
    assert state.stats()["requests"]["internal_errors"] == 0


a_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "Lead", "web", "app", SHA, SHA[:-1], "a@b.c", "EUR", "product"]),
    st.lists(st.sampled_from([SHA, "x", 3]), max_size=3),
)
a_field = st.sampled_from(
    [
        ("event_source",),
        ("test_event_code",),
        ("data", 0, "event"),
        ("data", 0, "event_id"),
        ("data", 0, "event_time"),
        ("data", 0, "user", "email"),
        ("data", 0, "user", "phone"),
        ("data", 0, "user", "ttp"),
        ("data", 0, "user", "idfa"),
        ("data", 0, "page", "url"),
        ("data", 0, "lead", "lead_id"),
        ("data", 0, "limited_data_use"),
        ("data", 0, "properties", "value"),
        ("data", 0, "properties", "currency"),
        ("data", 0, "properties", "contents"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from([p.stem for p in EXAMPLES]),
    changes=st.lists(st.tuples(a_field, a_value), max_size=4),
)
def test_random_changes_are_judged_the_same_both_ways(
    name: str, changes: list[tuple[tuple[Any, ...], Any]]
) -> None:
    body = example(name)
    for path, value in changes:
        try:
            _set(path, value)(body)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change took the path away
    expected = walk(body)
    assert tiktok_request_predicate()(body) is (expected is None)
    assert judged(body) == expected
