"""How fast the sink delivers through the sandbox, over loopback.

Starts the sandbox in its own process (``python -m processor.sandbox``) so it does not
share this process's GIL, then plays the poll thread: builds batches of realistic events
(each with a unique event_id, so every one is validated, deduplicated and stored),
submits them to a :class:`processor.sink.Sender` while keeping ``2 * max_in_flight``
batches outstanding, and drains the completions, for a few seconds per scenario:

* ``batch_1000``: 1000-event batches, no faults;
* ``batch_100``: 100-event batches, no faults;
* ``faults``: 1000-event batches with ``http=503:0.05,drop=0.02,code=40100:0.05``;
* ``bisect``: 1000-event batches, each with 2 bad events (the rest must still arrive).

Figures: events accepted per second (from the sender's outcomes, checked against the
sandbox's counters), requests per second, and the CPU used by this process and by the
sandbox. The rate limit is lifted (``max_requests_per_s`` 10,000) to measure the sink
itself; with the default 15 requests/s the ceiling is 15 times the batch size.

    .venv/bin/python bench/sink.py --seconds 3 --in-flight 8 --json
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sandbox_process import PIXEL, TOKEN, cpu_seconds, sandbox_process, tiktok_event  # noqa: E402

sys.path.insert(0, str(REPO))

from processor.batching import Batch, PendingEvent  # noqa: E402
from processor.config import AccessToken, DeliveryConfig, Secret, TikTokConfig  # noqa: E402
from processor.mapping import MappedEvent  # noqa: E402
from processor.metrics import Metrics  # noqa: E402
from processor.payload import BatchKey  # noqa: E402
from processor.sink import Sender  # noqa: E402


def run(
    url: str,
    pid: int,
    *,
    events: int,
    in_flight: int,
    seconds: float,
    faults: str = "",
    bad_per_batch: int = 0,
) -> dict[str, Any]:
    with httpx.Client(base_url=url) as control:
        control.post("/sandbox/reset")
        control.post("/sandbox/faults", json={"spec": faults})
    config = TikTokConfig(
        PIXEL, AccessToken("X", Secret(TOKEN), None), endpoint=url + "/open_api/v1.3/event/track/"
    )
    delivery = DeliveryConfig(
        max_in_flight=in_flight,
        max_requests_per_s=10_000.0,
        max_retries=30,
        backoff_initial_ms=10,
        backoff_max_ms=500,
    )
    metrics = Metrics()
    sender = Sender(config, delivery, metrics)
    sender.start()
    ids = itertools.count()
    now = int(time.time()) - 60
    key = BatchKey("web", PIXEL, None)

    def batch() -> Batch:
        items = []
        for i in range(events):
            n = next(ids)
            event = tiktok_event(f"bench-{n}", i, now)
            if i < bad_per_batch:
                event["event_id"] = n  # a number: 40002, isolated by bisection
            items.append(PendingEvent.of(n, MappedEvent.of("bench", "web", PIXEL, None, event)))
        return Batch(key, items)

    accepted = rejected = 0
    cpu_before, own_before = cpu_seconds(pid), time.process_time()
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        while sender.in_flight_batches < 2 * in_flight:
            sender.submit(batch())
        sender.wait(0.05)
        for outcome in sender.poll_completions():
            accepted += len(outcome.accepted)
            rejected += len(outcome.rejected)
    sender.close(0)  # what is still in flight is not counted
    elapsed = time.perf_counter() - began
    for outcome in sender.poll_completions():
        accepted += len(outcome.accepted)
        rejected += len(outcome.rejected)
    cpu_after, own_after = cpu_seconds(pid), time.process_time()
    with httpx.Client(base_url=url) as control:
        stats = control.get("/sandbox/stats").json()
    requests = stats["requests"]["total"]
    return {
        "events_per_request": events,
        "max_in_flight": in_flight,
        "faults": faults or None,
        "seconds": round(elapsed, 2),
        "events_accepted": accepted,
        "events_rejected": rejected,
        "events_per_s": round(accepted / elapsed),
        "requests_per_s": round(requests / elapsed, 1),
        "sandbox_stored": stats["events"]["accepted"],
        "sender_cpu_cores": round((own_after - own_before) / elapsed, 2),
        "sandbox_cpu_cores": None
        if cpu_before is None or cpu_after is None
        else round((cpu_after - cpu_before) / elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each scenario")
    parser.add_argument("--in-flight", type=int, default=8, help="delivery.max_in_flight")
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    args = parser.parse_args(argv)
    # One warning per rejected event or cancelled batch would drown the figures.
    logging.getLogger("processor.sink").setLevel(logging.ERROR)
    opts = {"in_flight": args.in_flight, "seconds": args.seconds}
    with sandbox_process(1000) as (url, pid):
        results = {
            "batch_1000": run(url, pid, events=1000, **opts),
            "batch_100": run(url, pid, events=100, **opts),
            "faults": run(
                url, pid, events=1000, faults="http=503:0.05,drop=0.02,code=40100:0.05", **opts
            ),
            "bisect": run(url, pid, events=1000, bad_per_batch=2, **opts),
        }
    for name, r in results.items():
        print(
            f"{name:>10}: {r['events_per_s']:>7,} events/s accepted, {r['events_rejected']} "
            f"rejected, {r['requests_per_s']} req/s (sender CPU {r['sender_cpu_cores']}, "
            f"sandbox CPU {r['sandbox_cpu_cores']} cores)"
        )
    print(f"(max_in_flight {args.in_flight}, {args.seconds:g} s each, loopback, rate limit lifted)")
    if args.json:
        print(orjson.dumps({"sink": results}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
