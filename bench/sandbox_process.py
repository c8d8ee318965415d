"""What the benchmarks that talk to the sandbox share: the sandbox in a child process
(so its CPU is its own and measurable), and a process's CPU seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"  # noqa: S105 - the benchmark sandbox's own throwaway token


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
