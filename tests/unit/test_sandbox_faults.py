"""The sandbox's fault configuration and dice, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.errors import ConfigError
from processor.sandbox.faults import (
    HTTP_FAULT_STATUSES,
    FaultConfig,
    FaultInjector,
    Outcome,
    coerce_faults,
)


def test_the_documented_spec_parses_to_its_fields() -> None:
    config = FaultConfig.from_spec(
        "latency=20ms, jitter=0.5s, code=40100:0.05, code=50000:1%, http=503:0.02,"
        " drop=0.01, next=40100*3, next=http429, next=drop*2, token_after=100:40102,"
        " rps=50, burst=10, retry_after=2, seed=7"
    )
    assert config == FaultConfig(
        latency_ms=20,
        jitter_ms=500,
        codes=((40100, 0.05), (50000, 0.01)),
        http=((503, 0.02),),
        drop=0.01,
        next=((Outcome("code", 40100), 3), (Outcome("http", 429), 1), (Outcome("drop"), 2)),
        token_after=100,
        token_code=40102,
        rps=50,
        burst=10,
        retry_after_s=2,
        seed=7,
    )


def test_an_empty_spec_means_no_faults() -> None:
    assert FaultConfig.from_spec("") == FaultConfig() == coerce_faults(None)
    assert FaultConfig().to_spec() == ""


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("latency", "expected key=value"),
        ("latency=fast", "not a duration"),
        ("latency=2m", "not a duration"),
        ("latency=61s", "latency must be between 0 and 60000 ms"),
        ("code=40100", "expected VALUE:RATE"),
        ("code=40100:lots", "not a rate"),
        ("code=12345:0.1", "code 12345 is not a TikTok error code"),
        ("code=0:0.1", "code 0 is not a TikTok error code"),
        ("code=40100:0.1,code=40100:0.2", "code 40100 is given twice"),
        ("http=418:0.1", "HTTP status 418 cannot be injected"),
        ("drop=1.5", "drop: rate must be between 0 and 1"),
        ("drop=0.6,code=50000:0.6", "add up to 1.2, more than 1"),
        ("next=teapot", "is not an outcome"),
        ("next=40100*0", "count must be 1.."),
        ("token_after=5:40104", "token code must be 40102 or 40105"),
        ("rps=0", "rps must be above 0"),
        ("seed=7,seed=8", "given twice"),
        ("latency_ms=5", "unknown fault"),
    ],
)
def test_a_bad_spec_names_the_item_and_the_problem(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        FaultConfig.from_spec(spec)
    assert problem in str(raised.value)
    assert all(p.startswith("faults: ") for p in raised.value.problems)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        FaultConfig.from_spec("wat=1,latency=x,drop=2,http=200:0.1")
    assert len(raised.value.problems) == 5, raised.value.problems


def test_the_json_form_accepts_a_spec_or_fields_and_rejects_the_rest() -> None:
    spec = "latency=5ms,code=40100:0.1,next=drop*2,seed=3"
    assert FaultConfig.from_json({"spec": spec}) == FaultConfig.from_spec(spec)
    fields = {"latency_ms": 5, "codes": {"40100": 0.1}, "next": ["drop*2"], "seed": 3}
    assert FaultConfig.from_json(fields) == FaultConfig.from_spec(spec)
    bad_documents: list[Any] = [[], {"spec": 3}, {"spec": "", "seed": 1}, {"drop": "x"}, {"w": 1}]
    for bad in bad_documents:
        with pytest.raises(ConfigError):
            FaultConfig.from_json(bad)
    with pytest.raises(ConfigError, match="seed: must be an integer"):
        FaultConfig.from_json({"seed": True})


# At most five rates are drawn (2 codes, 2 statuses, drop): 5 x 0.2 never exceeds 1.
rates = st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.2])
outcomes = st.one_of(
    st.sampled_from([40000, 40002, 40100, 50000, 50002, 51003, 60001, 61000, 20001]).map(
        lambda c: Outcome("code", c)
    ),
    st.sampled_from(sorted(HTTP_FAULT_STATUSES)).map(lambda s: Outcome("http", s)),
    st.just(Outcome("drop")),
)
configs = st.builds(
    FaultConfig,
    latency_ms=st.integers(0, 60_000).map(float),
    jitter_ms=st.sampled_from([0.0, 0.5, 10.0, 1500.0]),
    codes=st.lists(st.sampled_from([40100, 50000, 60001]), unique=True, max_size=2).flatmap(
        lambda cs: st.tuples(*[st.tuples(st.just(c), rates) for c in cs])
    ),
    http=st.lists(st.sampled_from([429, 503]), unique=True, max_size=2).flatmap(
        lambda ss: st.tuples(*[st.tuples(st.just(s), rates) for s in ss])
    ),
    drop=rates,
    next=st.lists(st.tuples(outcomes, st.integers(1, 50)), max_size=3).map(tuple),
    token_after=st.none() | st.integers(0, 1000),
    token_code=st.sampled_from([40102, 40105]),
    rps=st.none() | st.sampled_from([0.5, 1.0, 50.0, 1000.0]),
    burst=st.none() | st.integers(1, 100),
    retry_after_s=st.integers(0, 60),
    seed=st.none() | st.integers(0, 2**32),
    reject=st.lists(st.sampled_from(["bad-", "poison", "x"]), unique=True, max_size=2).map(tuple),
)


@given(configs)
def test_spec_and_json_forms_round_trip(config: FaultConfig) -> None:
    config = FaultConfig.from_spec(config.to_spec())  # token_code only survives with token_after
    assert FaultConfig.from_spec(config.to_spec()) == config
    assert FaultConfig.from_json(config.to_json()) == config


def _outcomes(injector: FaultInjector, n: int) -> list[str]:
    return [str(injector.decide().outcome) for _ in range(n)]


def test_the_queue_comes_first_in_order_then_the_rates() -> None:
    injector = FaultInjector(FaultConfig.from_spec("next=40100*2,next=drop,code=50000:1"))
    assert _outcomes(injector, 5) == ["40100", "40100", "drop", "50000", "50000"]


def test_a_seed_makes_the_dice_repeat_and_configure_restarts_them() -> None:
    config = FaultConfig.from_spec("code=50000:0.2,http=503:0.2,drop=0.2,jitter=10ms,seed=42")
    injector = FaultInjector(config)
    first = _outcomes(injector, 500)
    injector.configure(config)
    assert _outcomes(injector, 500) == first
    assert _outcomes(FaultInjector(config), 500) == first
    for outcome, expected in (("50000", 100), ("http503", 100), ("drop", 100), ("None", 200)):
        assert abs(first.count(outcome) - expected) <= 40, (outcome, first.count(outcome))


def test_the_sandbox_seed_is_used_when_the_config_has_none() -> None:
    config = FaultConfig.from_spec("code=50000:0.5")
    a, b = FaultInjector(config, default_seed=1), FaultInjector(config, default_seed=1)
    assert _outcomes(a, 100) == _outcomes(b, 100)


def test_latency_and_jitter_stay_in_bounds() -> None:
    injector = FaultInjector(FaultConfig.from_spec("latency=20ms,jitter=10ms,seed=1"))
    delays = [injector.decide().delay_s for _ in range(200)]
    assert all(0.020 <= d <= 0.030 for d in delays)
    assert max(delays) - min(delays) > 0.005


def test_the_rate_limit_is_a_token_bucket() -> None:
    now = [100.0]
    injector = FaultInjector(FaultConfig(rps=2, burst=3), clock=lambda: now[0])
    limited = [injector.decide().rate_limited for _ in range(5)]
    assert limited == [False, False, False, True, True]
    now[0] += 1.0  # two more requests' worth
    assert [injector.decide().rate_limited for _ in range(3)] == [False, False, True]


def test_the_token_fault_fires_once_after_n_authorised_requests() -> None:
    injector = FaultInjector(FaultConfig.from_spec("token_after=2:40102"))
    assert [injector.authorised() for _ in range(4)] == [None, None, 40102, None]
    assert injector.state()["token_fault_fired"] is True
    injector.configure(injector.config)
    assert injector.state()["token_fault_in"] == 2


def test_reject_substrings_round_trip_through_spec_and_json() -> None:
    config = FaultConfig.from_spec("reject=bad-,reject=poison")
    assert config.reject == ("bad-", "poison")
    assert FaultConfig.from_spec(config.to_spec()) == config
    assert FaultConfig.from_json(config.to_json()) == config
