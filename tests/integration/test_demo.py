"""`make demo` keeps working: the demo script, run as the Makefile runs it, ends with
every expected event accepted."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_demo_delivers_every_expected_event() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
    done = subprocess.run(
        [sys.executable, "-m", "devkit.demo", "--records", "1500", "--timeout", "120"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: every expected event was accepted exactly once" in done.stdout
    for event in ("ViewContent", "CompleteRegistration", "ClickButton", "Lead"):
        assert event in done.stdout
    assert "dead-lettered 0" in done.stdout
    # The match keys, from /metrics: every sample event carries ip and user agent.
    lines = done.stdout.splitlines()
    start = lines.index("match keys of the accepted events (tiktok_events_match_keys_total):")
    shown = {line.split(":")[0].strip(): line for line in lines[start + 1 : start + 5]}
    assert set(shown) == {"ViewContent", "CompleteRegistration", "ClickButton", "Lead"}
    assert all("ip+ua 100 %" in line for line in shown.values()), shown
