"""``promtool`` (Prometheus's checker) for the tests, taken from Debian's ``prometheus`` package.

The tests lint the processor's live ``/metrics`` (``promtool check metrics``), check the alert
rules (``promtool check rules``) and run their unit tests (``promtool test rules``). Nothing is
installed system-wide: `fetch()` downloads the package file with ``apt-get download`` into a
temporary directory (no root needed for that step), unpacks it with ``dpkg-deb -x`` and copies
only ``usr/bin/promtool`` into the git-ignored ``.cache/tools/``. A stale package list (the
download fails with 404 or "unable to locate") is refreshed once with ``apt-get update``, which
needs root, as on CI. The copy is renamed into place only once complete, and a lock file keeps
two concurrent fetches from racing, so every later call is a no-op that only checks the binary.

CLI: ``python -m devkit.promtool fetch`` prints the path of the binary (``make tools``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from devkit import proc

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = REPO_ROOT / ".cache" / "tools"
PACKAGE = "prometheus"
BINARY = "promtool"

#: How long one apt-get or dpkg-deb call may take (the package is about 30 MB).
_TIMEOUT_S = 600.0


class PromtoolError(RuntimeError):
    """promtool could not be fetched; the message says why, for a human."""


def cached(tools_dir: Path = TOOLS_DIR) -> Path | None:
    """The cached promtool if it is there and runs, else None."""
    path = tools_dir / BINARY
    if not os.access(path, os.X_OK):
        return None
    try:
        proc = subprocess.run(
            [str(path), "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if proc.returncode == 0 else None


def fetch(tools_dir: Path = TOOLS_DIR) -> Path:
    """The path of a working promtool in `tools_dir`, fetching it first when needed."""
    found = cached(tools_dir)
    if found is not None:
        return found
    tools_dir.mkdir(parents=True, exist_ok=True)
    with _locked(tools_dir / ".promtool.lock"):
        found = cached(tools_dir)  # another process may have fetched it while we waited
        if found is not None:
            return found
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise PromtoolError(
                    f"{tool} is not available: promtool is taken from Debian's {PACKAGE} "
                    f"package; on another system put a promtool binary at {tools_dir / BINARY}"
                )
        with tempfile.TemporaryDirectory(prefix="promtool-") as scratch:
            work = Path(scratch)
            deb = _download(work)
            root = work / "root"
            proc.run(
                ["dpkg-deb", "-x", str(deb), str(root)],
                what=f"unpacking {deb.name}",
                timeout=_TIMEOUT_S,
                error=PromtoolError,
            )
            source = root / "usr" / "bin" / BINARY
            if not source.is_file():
                raise PromtoolError(f"{deb.name} holds no usr/bin/{BINARY}")
            staging = tools_dir / f".{BINARY}.{os.getpid()}"
            shutil.copyfile(source, staging)
            staging.chmod(0o755)
            staging.replace(tools_dir / BINARY)
    found = cached(tools_dir)
    if found is None:
        raise PromtoolError(f"{tools_dir / BINARY} was fetched but does not run")
    return found


def _download(work: Path) -> Path:
    """``apt-get download prometheus`` into `work`; once more after ``apt-get update`` if the
    package list is stale or empty (a fresh container has none)."""
    command = ["apt-get", "download", "-q", PACKAGE]
    first = _apt(command, work)
    if first.returncode != 0:
        update = _apt(["apt-get", "update", "-q"], work)
        if update.returncode != 0:
            raise PromtoolError(
                f"`apt-get download {PACKAGE}` failed and `apt-get update` failed too "
                f"(it needs root):\n{proc.tail(first.stdout)}\n{proc.tail(update.stdout)}"
            )
        again = _apt(command, work)
        if again.returncode != 0:
            raise PromtoolError(f"`apt-get download {PACKAGE}` failed:\n{proc.tail(again.stdout)}")
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise PromtoolError(f"`apt-get download {PACKAGE}` left no {PACKAGE}_*.deb")
    return debs[-1]


def _apt(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # No stdin and no questions: CI runs this with stdin closed.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    what = f"`{' '.join(command)}`"
    return proc.run(
        command, what=what, timeout=_TIMEOUT_S, error=PromtoolError, cwd=cwd, env=env, check=False
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.promtool",
        description="promtool from Debian's prometheus package, cached in .cache/tools/.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="fetch promtool once (cached) and print its path")
    parser.parse_args(argv)
    try:
        path = fetch()
    except PromtoolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
