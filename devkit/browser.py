"""Headless Chromium for the browser tests, from Debian's ``chromium`` and ``chromium-driver``.

The browser tests (``tests/browser/``) drive Debian's Chromium with Playwright; Playwright's
own browser downloads are never used. `ensure()` installs the two packages when
``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` is missing, with
``apt-get install -y --no-install-recommends`` and no questions asked (CI has no standard
input). A stale or empty package list (a fresh container has none) makes the install fail;
it is then refreshed once with ``apt-get update`` and the install tried again. apt-get needs
root: it runs as it is for root, through ``sudo -n`` for anyone else when sudo is there, and
otherwise `BrowserError` says what to run by hand.

`CHROMIUM_ARGS` are the flags every test launch uses: headless, and nothing that reaches
out to the network on its own (component updates, sync, QUIC probes), which on a machine
without a network only makes Chromium wait on connections that never open.

CLI: ``python -m devkit.browser ensure`` installs what is missing and prints both versions;
``python -m devkit.browser check`` only prints them (exit 1 when either is missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devkit import proc

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: What the two packages install: the browser first.
EXECUTABLES = (CHROMIUM, CHROMEDRIVER)
PACKAGES = ("chromium", "chromium-driver")

#: The command that installs the browser, for error messages.
ENSURE_COMMAND = "python -m devkit.browser ensure"

#: Flags of every launch (a fresh ``--user-data-dir`` is added per launch).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # root in a container: Chromium's own sandbox cannot start there
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

#: How long one apt-get call may take (the two packages and their libraries: ~100 MB).
_TIMEOUT_S = 900.0
#: How long ``--version`` may take.
_VERSION_TIMEOUT_S = 60.0


class BrowserError(RuntimeError):
    """The browser could not be installed or does not run; the message says why."""


def missing(executables: Sequence[Path] = EXECUTABLES) -> list[Path]:
    """The browser's executables that are not there."""
    return [path for path in executables if not os.access(path, os.X_OK)]


def version(path: Path) -> str:
    """What ``PATH --version`` prints (``Chromium 156.0.8078.114 built on Debian …``)."""
    done = proc.run(
        [str(path), "--version"],
        what=f"`{path} --version`",
        timeout=_VERSION_TIMEOUT_S,
        error=BrowserError,
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "(no version)"


def require(executables: Sequence[Path] = EXECUTABLES) -> Path:
    """The Chromium executable, or `BrowserError` saying how to install it."""
    absent = missing(executables)
    if absent:
        names = " and ".join(str(path) for path in absent)
        raise BrowserError(
            f"{names} missing: the browser tests need Debian's chromium and chromium-driver; "
            f"install them with `{ENSURE_COMMAND}` (as root, or with sudo)"
        )
    return executables[0]


def ensure(executables: Sequence[Path] = EXECUTABLES) -> list[str]:
    """Install Chromium and its driver when either is missing; a line for each with its
    version."""
    if missing(executables):
        _install()
        absent = missing(executables)
        if absent:
            names = ", ".join(str(path) for path in absent)
            raise BrowserError(f"apt-get installed {' '.join(PACKAGES)} but {names} is missing")
    return [f"{path.name}: {version(path)} ({path})" for path in executables]


def _install() -> None:
    prefix = _privilege_prefix()
    if shutil.which("apt-get") is None:
        raise BrowserError(
            "apt-get is not available: install Chromium and chromedriver so that "
            f"{' and '.join(map(str, EXECUTABLES))} exist, then run the browser tests again"
        )
    install = [
        *prefix,
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        # Wait for another apt or dpkg run to finish instead of failing at once.
        "-o",
        "DPkg::Lock::Timeout=300",
        *PACKAGES,
    ]
    first = _apt(install)
    if first.returncode == 0:
        return
    update = _apt([*prefix, "apt-get", "update", "-q"])
    if update.returncode != 0:
        raise BrowserError(
            f"`apt-get install {' '.join(PACKAGES)}` failed and `apt-get update` failed too:\n"
            f"{proc.tail(first.stdout)}\n{proc.tail(update.stdout)}"
        )
    again = _apt(install)
    if again.returncode != 0:
        raise BrowserError(
            f"`apt-get install {' '.join(PACKAGES)}` failed:\n{proc.tail(again.stdout)}"
        )


def _privilege_prefix() -> list[str]:
    """What runs apt-get as root: nothing for root, ``sudo -n`` (never a password prompt)
    for anyone else."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") is not None:
        # sudo resets the environment, so the frontend is set on the far side of it.
        return ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    raise BrowserError(
        f"installing {' '.join(PACKAGES)} needs root, and sudo is not available: run "
        f"`apt-get install -y --no-install-recommends {' '.join(PACKAGES)}` as root"
    )


def _apt(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    what = f"`{' '.join(command)}`"
    return proc.run(
        command, what=what, timeout=_TIMEOUT_S, error=BrowserError, env=env, check=False
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.browser",
        description="Debian's Chromium and chromedriver for the browser tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ensure", help="install chromium and chromium-driver when missing")
    commands.add_parser("check", help="print their versions; exit 1 when either is missing")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            require()
        lines = ensure()
    except BrowserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
