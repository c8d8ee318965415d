"""Benchmark: decode + validate + filter + map + hash + validate output, on one core.

Generates realistic clickstream (the four seed kinds plus records that must be
filtered, see processor.sample), compiles config/example.yaml, and runs every
record through the same Transformer the processor uses. In the same run and
over the same bytes it measures an ``orjson.loads``-only loop as the baseline,
and prints both rates and their ratio. The machines are shared and noisy, so
each rate is the best of several rounds, timed in this thread's CPU time (one
core's worth of work), and the ratio is the figure to compare across machines.

    python bench/mapping.py [--records 200000] [--rounds 5] [--json]

``--instructions`` counts instead of timing: each loop runs under valgrind's callgrind,
once over ``--records`` records and once over none, and the difference divided by the
records is its instructions per record. Counts do not move with whatever else the
machine runs (a busy 2-core machine moves the timed rates by a third or more), so they
are the figure to compare two versions of the code by. It is ~50 times slower than
running natively: 20,000 records is plenty.

    python bench/mapping.py --instructions [--records 20000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
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


#: Distinct records an instruction count cycles through (the same set for every count,
#: so that the set-up cancels out in the difference).
COUNTED_SAMPLE = 2000
#: The clock of a counted run: fixed, so every run builds the same records.
COUNTED_NOW = 1_790_000_000.0


def counted_loop(body: str, records: int, seed: int, config: str) -> None:
    """What one callgrind run executes: the set-up, then ``records`` iterations of
    ``body`` (``pipeline`` or ``loads``) over the fixed sample."""
    now = COUNTED_NOW
    sample = list(ClickstreamGenerator(seed=seed, start=now - 3600).records(COUNTED_SAMPLE))
    _, transformer, _ = load_pipeline(config, clock=lambda: now)
    work = [(r.topic, r.value) for r in sample]
    gc.freeze()
    if body == "pipeline":
        transform = transformer.transform
        for i in range(records):
            topic, value = work[i % COUNTED_SAMPLE]
            transform(topic, 0, i, value)
    else:
        loads = orjson.loads
        for i in range(records):
            loads(work[i % COUNTED_SAMPLE][1])


def count_instructions(args: argparse.Namespace) -> int:
    """``--instructions``: each loop's instructions per record, from callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("--instructions needs valgrind (Debian: apt-get install valgrind)")
        return 2
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run

    def collected(body: str, records: int) -> subprocess.Popen[str]:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        command += [sys.executable, __file__, "--counted-loop", body, "--records", str(records)]
        command += ["--seed", str(args.seed), "--config", args.config]
        return subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

    per_record: dict[str, float] = {}
    for body in ("pipeline", "loads"):
        runs = [collected(body, 0), collected(body, args.records)]  # one a core
        counts = []
        for run in runs:
            _, errors = run.communicate()
            found = re.search(r"Collected : (\d+)", errors)
            if run.returncode != 0 or found is None:
                print(f"callgrind run of {body} failed:\n{errors[-2000:]}")
                return 1
            counts.append(int(found.group(1)))
        per_record[body] = (counts[1] - counts[0]) / args.records
    ratio = per_record["loads"] / per_record["pipeline"]
    print(f"records: {args.records:,} (cycling through {COUNTED_SAMPLE:,} sample records)")
    print(f"pipeline:     {per_record['pipeline']:10,.0f} instructions a record")
    print(f"orjson.loads: {per_record['loads']:10,.0f} instructions a record")
    print(f"ratio loads/pipeline: {ratio:.3f}  (callgrind: the same on a busy machine)")
    if args.json:
        summary = {
            "pipeline_instructions_per_record": round(per_record["pipeline"]),
            "loads_instructions_per_record": round(per_record["loads"]),
            "instructions_ratio": round(ratio, 4),
            "records": args.records,
        }
        print(orjson.dumps(summary).decode())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=None, help="200,000 (20,000 counted)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", default=str(ROOT / "config" / "example.yaml"))
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions with callgrind"
    )
    parser.add_argument("--counted-loop", choices=("pipeline", "loads"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.counted_loop:
        counted_loop(args.counted_loop, args.records or 0, args.seed, args.config)
        return 0
    if args.instructions:
        args.records = 20_000 if args.records is None else args.records
        if args.records < 1:
            parser.error("--records must be at least 1")
        return count_instructions(args)
    args.records = 200_000 if args.records is None else args.records

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
