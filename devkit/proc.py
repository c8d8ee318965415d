"""Running and stopping the external programs devkit drives (mvn, java, npm, pip, apt-get, ...).

This module owns devkit's subprocess handling, so every tool reports a failing command the same
way:

* `run` runs a command to completion without standard input (CI has none) and raises the
  caller's own error type, with the tail of the command's output, when it cannot start, runs
  past its timeout or exits non-zero;
* `tail`, `as_text` and `file_tail` cut output and log files down to what an error message
  needs;
* `pid_alive`, `terminate_pid` and `die_with_parent_prefix` control long-running processes
  that are not (or not only) our children, such as the Kafka JVMs.

Nothing here knows about Kafka, helm or promtool: callers pass what the command is for and
which error to raise.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: How many lines of a command's output an error message quotes.
TAIL_LINES = 40

# Maven prints ANSI colour resets even in batch mode; they garble error messages.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run(
    command: Sequence[str],
    *,
    what: str,
    timeout: float,
    error: type[Exception],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `command` to completion and return it; its `stdout` holds stdout and stderr merged.

    `what` names the command in messages, as their subject ("npm pack", "unpacking x.deb").
    Raises `error` (with a one-line reason and the tail of the output) when the command cannot
    start, when it is still running after `timeout` seconds (it is killed), and, with `check`,
    when it exits non-zero. With ``check=False`` the caller inspects `returncode` itself.
    """
    try:
        proc = subprocess.run(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            # One stream, in the order the command wrote it: a tail then reads like a terminal.
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise error(
            f"{what} did not finish in {timeout:g} s{_quoted(as_text(exc.stdout))}"
        ) from exc
    except OSError as exc:
        raise error(f"{what} could not start: {exc}") from exc
    if check and proc.returncode != 0:
        raise error(
            f"{what} failed (exit {proc.returncode}){_quoted(proc.stdout)}\n"
            f"command: {shlex.join(command)}"
        )
    return proc


def _quoted(output: str) -> str:
    end = tail(output)
    return f":\n{end}" if end else ""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of `text`, without ANSI escapes or surrounding blank space."""
    return "\n".join(_ANSI_ESCAPE.sub("", text).strip().splitlines()[-lines:])


def as_text(data: str | bytes | None) -> str:
    """Captured output as text, whatever form the subprocess module handed it over in."""
    # TimeoutExpired carries bytes even from a text-mode run, and None when nothing was read.
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def file_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of the file at `path`, or "(no output)" if it cannot be read."""
    try:
        with path.open("rb") as handle:
            # Only the end matters and a log can be large: read the last 64 KiB.
            handle.seek(max(0, path.stat().st_size - 65536))
            return tail(handle.read().decode(errors="replace"), lines)
    except OSError:
        return "(no output)"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    # A zombie has exited; it only waits for a parent (init, when we are not it) to reap it.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def terminate_pid(pid: int, timeout: float) -> None:
    """SIGTERM a process that is not our child, wait for it, SIGKILL it after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        time.sleep(0.05)


@functools.cache
def die_with_parent_prefix() -> tuple[str, ...]:
    """A command prefix that makes a program get SIGKILL when the process that started it dies.

    Without it, JVMs started by a pytest run that is itself killed (CI timeout, Ctrl-\\,
    pytest-timeout's thread method) keep running forever. util-linux's `setpriv` sets the
    Linux parent-death signal and then execs the program, so it keeps the pid we know.
    Elsewhere (no setpriv, macOS) the prefix is empty and programs are not tied to their parent.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return ()
    probe = subprocess.run(
        [setpriv, "--pdeathsig", "KILL", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=10,
    )
    return (setpriv, "--pdeathsig", "KILL") if probe.returncode == 0 else ()
