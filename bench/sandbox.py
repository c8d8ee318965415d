"""How much the TikTok sandbox itself can take, over loopback.

Starts the sandbox in its own process (``python -m processor.sandbox``) unless ``--url``
points at a running one, then drives it with K concurrent keep-alive httpx clients (one
thread each), for a few seconds per scenario:

* ``batch``:  1000-event requests, reported as events accepted per second;
* ``single``: 1-event requests, reported as requests per second.

Every event has a unique event_id, so each is really validated, deduplicated and
stored. Figures come from the sandbox's own counters; the sandbox's CPU use (from
/proc) shows whether it or the client was the bottleneck, and gives its cost per event
(CPU µs per accepted event) and so its capacity: the events per second one core of the
sandbox could accept if the clients kept up (1e6 / CPU µs per event; the sandbox is one
Python process, so about one core's worth). On a shared machine the events per second
measured move with the load; the CPU per event is the steady figure. ``--json`` prints
a JSON object as the last line, with the batch scenario's figures also at its top level
(``batch_sandbox_cpu_us_per_event``, ``batch_capacity_events_per_core_s``,
``batch_events_per_s``).

    .venv/bin/python bench/sandbox.py --clients 4 --seconds 3 --json
"""

from __future__ import annotations

import argparse
import itertools
import ssl
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sandbox_process import PIXEL, TOKEN, cpu_seconds, sandbox_process, tiktok_event  # noqa: E402

TRACK = "/open_api/v1.3/event/track/"
MARK = b"@RUN@"


def template(events: int) -> bytes:
    """A request body whose event_ids contain MARK, replaced per request to stay unique."""
    data = [tiktok_event(f"bench-{MARK.decode()}-{i}", i, 1767225600) for i in range(events)]
    return orjson.dumps({"event_source": "web", "event_source_id": PIXEL, "data": data})


def run(url: str, pid: int | None, *, events: int, clients: int, seconds: float) -> dict[str, Any]:
    """K clients post ``events``-event requests for ``seconds``; returns the figures."""
    body = template(events)
    counter = itertools.count()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    tls = ssl.create_default_context()  # shared: httpx builds one per client otherwise
    headers = {"Access-Token": TOKEN, "Content-Type": "application/json"}
    start = threading.Barrier(clients + 1)
    deadline = 0.0

    def client() -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=60, verify=tls) as http:
            http.get("/healthz")  # open the keep-alive connection before the clock starts
            start.wait()
            while time.perf_counter() < deadline:
                content = body.replace(MARK, str(next(counter)).encode())
                began = time.perf_counter()
                response = http.post(TRACK, content=content, headers=headers)
                mine.append(time.perf_counter() - began)
                if response.status_code != 200 or response.json()["code"] != 0:
                    with lock:
                        failures.append(response.text[:200])
        with lock:
            latencies.extend(mine)

    with httpx.Client(base_url=url, verify=tls) as control:
        control.post("/sandbox/reset")
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        cpu_before = cpu_seconds(pid)
        deadline = time.perf_counter() + seconds
        began = time.perf_counter()
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - began
        cpu_after = cpu_seconds(pid)
        stats = control.get("/sandbox/stats").json()

    accepted = stats["events"]["accepted"]
    requests = stats["requests"]["by_code"].get("0", 0)
    latencies.sort()
    server_cpu = per_cpu_s = cpu_us_per_event = capacity = None
    if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
        used = cpu_after - cpu_before
        server_cpu = round(used / elapsed, 2)
        # The sandbox's ceiling: it is one Python process (one core's worth under the GIL),
        # so requests per CPU-second is what it could do if the clients kept up.
        per_cpu_s = round(requests / used, 1)
        if accepted:
            cpu_us_per_event = round(used / accepted * 1e6, 2)
            capacity = round(accepted / used)
    return {
        "events_per_request": events,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "events_per_s": round(accepted / elapsed, 1),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)
        if latencies
        else None,
        "failures": len(failures),
        "server_cpu_cores": server_cpu,
        "requests_per_server_cpu_s": per_cpu_s,
        "sandbox_cpu_us_per_event": cpu_us_per_event,
        "capacity_events_per_core_s": capacity,
    }


def ceiling(result: dict[str, Any], events: int) -> str:
    """What one sandbox core could take, from its CPU cost per request."""
    per_cpu_s = result["requests_per_server_cpu_s"]
    return "unknown" if per_cpu_s is None else f"~{per_cpu_s * events:,.0f}"


def capacity(result: dict[str, Any]) -> str:
    """Events per second one sandbox core could accept, from its CPU cost per event."""
    events = result["capacity_events_per_core_s"]
    return "unknown" if events is None else f"~{events:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running sandbox (with token bench-token)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent keep-alive clients")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each scenario")
    parser.add_argument("--json", action="store_true", help="print a JSON object last")
    args = parser.parse_args(argv)

    def scenarios(url: str, pid: int | None) -> dict[str, Any]:
        opts = {"clients": args.clients, "seconds": args.seconds}
        return {
            "batch_1000": run(url, pid, events=1000, **opts),
            "single_event": run(url, pid, events=1, **opts),
        }

    if args.url:
        results = scenarios(args.url.rstrip("/"), None)
    else:
        with sandbox_process(100000) as (url, pid):
            results = scenarios(url, pid)

    batch, single = results["batch_1000"], results["single_event"]
    print(
        f"1000-event requests: {batch['events_per_s']:,.0f} events/s accepted "
        f"({batch['requests_per_s']} req/s, p50 {batch['latency_ms_p50']} ms, "
        f"p99 {batch['latency_ms_p99']} ms, sandbox CPU {batch['server_cpu_cores']} cores, "
        f"{batch['failures']} failures; ceiling {ceiling(batch, 1000)} events/s)"
    )
    print(
        f"                     sandbox CPU {batch['sandbox_cpu_us_per_event']} µs/event: "
        f"capacity {capacity(batch)} events/s per core"
    )
    print(
        f"1-event requests:    {single['requests_per_s']:,.0f} requests/s "
        f"(p50 {single['latency_ms_p50']} ms, p99 {single['latency_ms_p99']} ms, "
        f"sandbox CPU {single['server_cpu_cores']} cores, {single['failures']} failures; "
        f"ceiling {ceiling(single, 1)} requests/s)"
    )
    print(f"({args.clients} keep-alive httpx clients, {args.seconds:g} s each, loopback)")
    if args.json:
        summary = {
            "batch_sandbox_cpu_us_per_event": batch["sandbox_cpu_us_per_event"],
            "batch_capacity_events_per_core_s": batch["capacity_events_per_core_s"],
            "batch_events_per_s": batch["events_per_s"],
        }
        print(orjson.dumps({"sandbox": results, **summary}).decode())
    return 1 if batch["failures"] or single["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
