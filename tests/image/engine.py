"""The docker CLI for the image tests: one-shot runs and long-running containers of the image.

Every container runs as the deployments run it (docker-compose.yml, the Helm chart): the
image's own user, a read-only root filesystem, every capability dropped and no privilege
escalation (`HARDENED`). The engine has no bridge network (devkit.image starts dockerd with
``--bridge=none``), so containers that talk to the broker or the sandbox use the host's network
and meet them on 127.0.0.1; one-shots that need no network get none.

`SecretDir` lays a token out the way the kubelet mounts a Kubernetes Secret (``KEY`` →
``..data/KEY`` → ``..<version>/KEY``, updated by swapping the ``..data`` link), so rotating it
here rotates it the way a cluster does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devkit.image import IMAGE, IMAGE_ENV
from devkit.kafka import unique_name

#: The image under test (devkit.image sets the variable; `make image-test` runs it).
IMAGE_REF = os.environ.get(IMAGE_ENV, IMAGE)
#: The Dockerfile's user; the chart's runAsUser and fsGroup are the same.
APP_UID = APP_GID = 10001
HARDENED = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
#: Every container a test starts carries it, so a leftover is easy to find.
TEST_LABEL = "org.tiktok-events.test=image"


def docker(
    *args: str, timeout: float = 120.0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The docker CLI; never raises on a non-zero exit (callers assert on it)."""
    return subprocess.run(
        ["docker", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_shot(
    *args: str,
    docker_args: Sequence[str] = (),
    network: str = "none",
    stdin: str | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """``docker run --rm`` of the image with `args` (its entry point is tiktok-events)."""
    interactive = ("--interactive",) if stdin is not None else ()
    return docker(
        "run", "--rm", *interactive, "--network", network, "--label", TEST_LABEL, *HARDENED,
        *docker_args, IMAGE_REF, *args,
        timeout=timeout, stdin=stdin,
    )  # fmt: skip


class Container:
    """One detached container of the image, hardened, on the host's network."""

    def __init__(self, name: str, docker_args: Sequence[str] = (), args: Sequence[str] = ()):
        self.name = unique_name(name)
        done = docker(
            "run", "--detach", "--name", self.name, "--label", TEST_LABEL, "--network", "host",
            *HARDENED, *docker_args, IMAGE_REF, *args,
        )  # fmt: skip
        assert done.returncode == 0, f"docker run failed:\n{done.stderr}"

    def inspect(self) -> dict[str, Any]:
        done = docker("inspect", self.name)
        assert done.returncode == 0, done.stderr
        doc: list[dict[str, Any]] = json.loads(done.stdout)
        return doc[0]

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.inspect()["State"]
        return state

    def health(self) -> str | None:
        """The Docker health status (starting, healthy, unhealthy), None without a check."""
        health = self.state().get("Health")
        return None if health is None else str(health["Status"])

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def logs(self) -> str:
        """Everything the container wrote, stdout then stderr."""
        done = docker("logs", self.name)
        return done.stdout + done.stderr

    def log_lines(self) -> list[str]:
        done = docker("logs", self.name)
        return [line for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.name, *command)

    def process_status(self, pid: int = 1) -> dict[str, str]:
        """/proc/PID/status of a process in the container (PID 1: the entry point)."""
        done = self.exec("cat", f"/proc/{pid}/status")
        assert done.returncode == 0, done.stderr
        return {
            key: value.strip()
            for key, _, value in (line.partition(":") for line in done.stdout.splitlines())
        }

    def stop(self, grace: float) -> tuple[int, float]:
        """``docker stop -t GRACE`` (SIGTERM, SIGKILL after GRACE s): (exit code, seconds)."""
        began = time.monotonic()
        done = docker("stop", "--time", str(int(grace)), self.name, timeout=grace + 60)
        took = time.monotonic() - began
        assert done.returncode == 0, done.stderr
        return int(self.state()["ExitCode"]), took

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, timeout=120)

    def describe(self) -> str:
        """State and log tail, for assertion messages."""
        try:
            state = {k: self.state().get(k) for k in ("Status", "ExitCode", "Error", "OOMKilled")}
        except AssertionError:
            state = {}
        return f"container {self.name} {state}:\n" + "\n".join(self.log_lines()[-40:])


class SecretDir:
    """A directory laid out like a Secret the kubelet mounts, readable by the image's group."""

    def __init__(self, path: Path, key: str, value: str) -> None:
        self.path = path
        self.key = key
        path.mkdir(parents=True)
        _readable_by_app(path, 0o750)
        self.write(value)
        (path / key).symlink_to(Path("..data") / key)

    def write(self, value: str) -> None:
        """Replace the value at once, as the kubelet does: a new version directory, then the
        ``..data`` link swapped by a rename (a reader sees the old file or the new one)."""
        version = self.path / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        version.mkdir()
        (version / self.key).write_text(value + "\n")
        _readable_by_app(version / self.key, 0o640)
        _readable_by_app(version, 0o750)
        link = self.path / "..data"
        old = link.resolve() if link.is_symlink() else None
        staged = self.path / "..data_tmp"
        staged.unlink(missing_ok=True)
        staged.symlink_to(version.name)
        staged.replace(link)
        if old is not None and old != version:
            for item in old.iterdir():
                item.unlink()
            old.rmdir()


def _readable_by_app(path: Path, mode: int) -> None:
    """Group APP_GID may read it (what the chart's fsGroup does); world-readable otherwise."""
    try:
        os.chown(path, -1, APP_GID)
    except PermissionError:
        mode |= 0o005 if path.is_dir() else 0o004
    path.chmod(mode)
