"""What the benchmarks that talk to the sandbox share: the sandbox in a child process
(so its CPU is its own and measurable), a process's CPU seconds, and a typical event."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"  # noqa: S105 - the benchmark sandbox's own throwaway token
PIXEL = "D34FV3JC77U1PDQ72P1G"
#: SHA-256 of jane.doe@example.com: a hashed email as TikTok wants it.
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"


def tiktok_event(event_id: str, i: int, event_time: int) -> dict[str, Any]:
    """A ViewContent event of typical size, product ``i``."""
    return {
        "event": "ViewContent",
        "event_time": event_time,
        "event_id": event_id,
        "user": {
            "email": SHA,
            "ip": "203.0.113.7",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "ttp": "Qm4tZr8LwP2vN6cXy0HbJ3sKdAe",
        },
        "page": {"url": f"https://shop.example.com/p/sku-{i}?ttclid=E.C.P.v3Xk9QmZ"},
        "properties": {
            "content_type": "product",
            "currency": "GBP",
            "value": 49.99,
            "contents": [{"content_id": f"sku-{i}", "price": 49.99, "quantity": 1}],
        },
    }


@contextmanager
def sandbox_process(max_stored_events: int) -> Iterator[tuple[str, int]]:
    """Run the sandbox CLI in a child process; yields (url, pid)."""
    command = [sys.executable, "-m", "processor.sandbox", "--port", "0", "--token", TOKEN]
    command += ["--log-level", "warning", "--max-stored-events", str(max_stored_events)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline() if process.stdout else ""
            match = re.search(r"(http://\S+)", line)
            if not match:
                raise SystemExit(f"the sandbox did not start: {line!r}")
            yield match.group(1), process.pid
        finally:
            process.terminate()
            process.wait(timeout=10)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
