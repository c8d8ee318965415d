"""Benchmark: decode + validate + filter + map + hash + validate output, on one core.

Generates realistic clickstream (the four seed kinds plus records that must be
filtered, see processor.sample), compiles config/example.yaml, and runs every
record through the same Transformer the processor uses. In the same run and
over the same bytes it measures an ``orjson.loads``-only loop as the baseline,
and prints both rates and their ratio. The machines are shared and noisy, so
each rate is the best of several rounds, timed in this thread's CPU time (one
core's worth of work), and the ratio is the figure to compare across machines.

    python bench/mapping.py [--records 200000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processor.sample import ClickstreamGenerator, expected_counts  # noqa: E402
from processor.transform import load_pipeline  # noqa: E402


def best_rate(count: int, rounds: int, body: Callable[[], None]) -> tuple[float, float]:
    """(best records/s by thread CPU time, best records/s by wall time)."""
    best_cpu = best_wall = float("inf")
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.thread_time()
        body()
        best_cpu = min(best_cpu, time.thread_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return count / best_cpu, count / best_wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", default=str(ROOT / "config" / "example.yaml"))
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()

    now = time.time()
    records = list(ClickstreamGenerator(seed=args.seed, start=now - 3600).records(args.records))
    _, transformer, _ = load_pipeline(args.config, clock=lambda: now)
    work = [(r.topic, r.value) for r in records]
    total_bytes = sum(len(v) for _, v in work)

    # Correctness first: the benchmark must measure the real outcome.
    produced: Counter[str] = Counter()
    rejected = 0
    for offset, (topic, value) in enumerate(work):
        result = transformer.transform(topic, 0, offset, value)
        produced.update(e.event for e in result.events)
        rejected += len(result.rejected)
    expected = expected_counts(records)
    if produced != expected or rejected:
        print(f"wrong output: {dict(produced)} != {dict(expected)}, {rejected} rejected")
        return 1
    filtered = len(records) - sum(expected.values())

    def loads_only() -> None:
        loads = orjson.loads
        for _, value in work:
            loads(value)

    def pipeline() -> None:
        transform = transformer.transform
        for offset, (topic, value) in enumerate(work):
            transform(topic, 0, offset, value)

    gc.freeze()  # as the processor does after start-up: long-lived objects leave the GC's way
    loads_cpu, loads_wall = best_rate(len(work), args.rounds, loads_only)
    records_cpu, records_wall = best_rate(len(work), args.rounds, pipeline)
    ratio = records_cpu / loads_cpu

    print(f"records: {len(work):,} ({total_bytes / len(work):.0f} B avg), filtered {filtered:,}")
    print("events:  " + ", ".join(f"{k} {v:,}" for k, v in sorted(expected.items())))
    print(f"pipeline:     {records_cpu:12,.0f} records/s per core   (wall {records_wall:,.0f})")
    print(f"orjson.loads: {loads_cpu:12,.0f} records/s per core   (wall {loads_wall:,.0f})")
    print(f"ratio pipeline/loads: {ratio:.3f}  (best of {args.rounds} rounds, thread CPU time)")
    if args.json:
        summary = {
            "records_per_s": round(records_cpu),
            "loads_per_s": round(loads_cpu),
            "ratio": round(ratio, 4),
            "records": len(work),
            "wall_records_per_s": round(records_wall),
        }
        print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
