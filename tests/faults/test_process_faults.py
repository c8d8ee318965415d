"""The processor itself fails: ``kill -9`` at random moments, SIGTERM mid-stream, and a
rebalance storm (members joining and leaving, one of them by ``kill -9``) while
backpressure keeps every member paused. Each scenario accounts for every expected
event by its ``event_id`` (see ``accounting.py``) and asserts that none is lost."""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from functools import partial

import pytest

from processor.sandbox import Sandbox
from tests.faults.accounting import (
    SOAK,
    FaultTable,
    Ledger,
    conclude,
    delivered,
    size,
    stop,
    wait_running,
)
from tests.integration.pipeline import MakePipeline, Pipeline, ProcessorProcess

pytestmark = pytest.mark.timeout(3600 if SOAK else 300)

#: The log line of a member that was given partitions (not an empty assignment).
ASSIGNED = re.compile(r"partitions assigned: (?!none)")


def accepted(pipeline: Pipeline) -> int:
    return int(pipeline.sandbox.stats()["events"]["accepted"])


def reached(pipeline: Pipeline, count: int) -> bool:
    return accepted(pipeline) >= count


def has_partitions(member: ProcessorProcess) -> bool:
    return ASSIGNED.search(member.log()) is not None


def kill_seed() -> int:
    """``FAULTS_SEED`` to replay a run, else a fresh seed (printed in the table)."""
    given = os.environ.get("FAULTS_SEED", "").strip()
    return int(given) if given else random.SystemRandom().randrange(1_000_000)


def junk(seed: int, count: int) -> list[tuple[bytes | None, bytes | None, str]]:
    """``count`` values that are not JSON, each different (so each letter is traceable)."""
    return [(b"junk", f"\x00not json {seed}-{i}".encode(), "decode") for i in range(count)]


def test_kill_9_at_random_moments_loses_nothing(
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
    fault_table: FaultTable,
) -> None:
    seed = kill_seed()
    print(f"kill -9 rounds: seed {seed} (FAULTS_SEED={seed} replays the moments)")
    rng = random.Random(seed)
    rounds = size(5, 20)
    # Slow delivery (one small request at a time) so a round spans several seconds, and
    # commits rare, so a kill leaves delivered-but-uncommitted records to replay.
    pipeline = make_pipeline(
        delivery={"commit_interval_ms": 1000, "max_batch_events": 10, "max_in_flight": 2}
    )
    sandbox.set_faults("latency=100ms")
    ledger = Ledger(pipeline)
    moments: list[str] = []
    for round_ in range(rounds):
        # A new chunk before each round: the stream never runs dry before the last kill.
        fresh = ledger.sample(size(600, 1000), seed=seed * 1000 + round_)
        ledger.poison("page_view", junk(round_, 5))
        processor = processors(pipeline)
        if rng.random() < 0.5:
            # Anywhere from start-up (joining the group) to well into the stream.
            delay = rng.uniform(0.2, 6.0)
            time.sleep(delay)
            moments.append(f"{delay:.1f}s")
        else:
            target = accepted(pipeline) + rng.randint(1, sum(1 for r in fresh if r.event))
            wait_running(processor, partial(reached, pipeline, target), 90, f"{target} accepted")
            moments.append(f"@{target}")
        assert processor.process.poll() is None, f"exited before its kill:\n{processor.log()}"
        processor.kill()
    print(f"kill moments: {', '.join(moments)}")
    final = processors(pipeline)
    conclude(ledger, final, fault_table, fault=f"kill -9 x{rounds} (seed {seed})", timeout=180)


def test_sigterm_mid_stream_stops_within_the_drain_timeout_and_a_restart_loses_nothing(
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
    fault_table: FaultTable,
) -> None:
    drain = 10.0
    # A small buffer: most of the stream is still in Kafka when the signal comes.
    pipeline = make_pipeline(
        delivery={
            "drain_timeout_s": drain,
            "max_batch_events": 50,
            "max_in_flight": 4,
            "max_buffered_events": 300,
        }
    )
    # Requests in flight and retries waiting when the signal comes.
    sandbox.set_faults("latency=200ms,jitter=300ms,http=503:0.1,seed=5")
    ledger = Ledger(pipeline)
    ledger.sample(size(3000, 20000), seed=501)
    first = processors(pipeline)
    third = len(ledger.expected_events) // 3
    wait_running(first, lambda: accepted(pipeline) >= third, 90, "a third of the events accepted")
    took = stop(first, timeout=drain + 30)
    assert took < drain + 10, f"the stop took {took:.1f}s:\n{first.log()}"
    assert accepted(pipeline) < len(ledger.expected_events), "stopped too late to prove anything"
    ledger.sample(size(1000, 5000), seed=502)
    sandbox.set_faults("latency=20ms")
    second = processors(pipeline)
    conclude(ledger, second, fault_table, fault="SIGTERM mid-stream, restart", stop_s=took)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_rebalance_storm_under_backpressure_loses_nothing(
    make_pipeline: MakePipeline,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
    fault_table: FaultTable,
    protocol: str,
) -> None:
    # A slow sandbox and a small buffer: every member spends the storm paused.
    pipeline = make_pipeline(
        partitions=4,
        group_protocol=protocol,
        delivery={"max_buffered_events": 100, "max_batch_events": 25, "max_in_flight": 2},
    )
    sandbox.set_faults("latency=200ms")
    ledger = Ledger(pipeline)
    ledger.sample(size(3000, 15000), seed=701)
    first = processors(pipeline)
    wait_running(
        first,
        lambda: pipeline.metric("tiktok_events_paused") == 1,
        60,
        "backpressure pausing member 1",
    )
    second, third = processors(pipeline), processors(pipeline)
    for member in (second, third):
        wait_running(member, partial(has_partitions, member), 60, "a joining member's share")
    during = ledger.sample(size(1500, 7500), seed=702)
    wait_running(first, lambda: delivered(pipeline, during) >= 200, 60, "three members delivering")
    assert second.process.poll() is None, f"exited before its kill:\n{second.log()}"
    second.kill()  # leaves without a word: its partitions move after the session timeout
    third_stop = stop(third, timeout=60)
    ledger.sample(size(1500, 7500), seed=703)
    sandbox.set_faults("latency=20ms")
    conclude(
        ledger,
        first,
        fault_table,
        fault=f"rebalance 1→3→1 paused (SIGTERM {third_stop:.1f}s)",
        protocol=protocol,
    )
    # Member 2 died; member 3 left cleanly and said so.
    assert "stopped:" in third.log(), third.log()
