"""The sample clickstream generator: deterministic, valid, and honest about its expectations."""

from __future__ import annotations

from collections import Counter

from processor.sample import ClickstreamGenerator, expected_counts
from processor.transform import load_pipeline
from tests.conftest import EXAMPLE_CONFIG

START = 1_767_225_600.0


def test_same_seed_same_records() -> None:
    first = list(ClickstreamGenerator(seed=3, start=START).records(200))
    second = list(ClickstreamGenerator(seed=3, start=START).records(200))
    other = list(ClickstreamGenerator(seed=4, start=START).records(200))
    assert first == second
    assert first != other


def test_every_record_becomes_exactly_its_expected_event() -> None:
    records = list(ClickstreamGenerator(seed=11, start=START).records(3000))
    _, transformer, _ = load_pipeline(EXAMPLE_CONFIG, clock=lambda: START + 600, environ={})
    produced: Counter[str] = Counter()
    for offset, r in enumerate(records):
        result = transformer.transform(r.topic, 0, offset, r.value)
        assert not result.rejected, (r.value, result.rejected)
        assert [e.event for e in result.events] == ([r.expected_event] if r.expected_event else [])
        produced.update(e.event for e in result.events)
    expected = expected_counts(records)
    assert produced == expected
    assert set(expected) == {"ViewContent", "ClickButton", "CompleteRegistration", "Lead"}
    assert sum(expected.values()) < len(records)  # some are filtered out on purpose
