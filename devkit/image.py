"""The container image built and run for real: a Docker engine, the base image, the build.

`make image-test` runs ``python -m devkit.image run -- pytest -m image tests/image``. This module
owns everything before and after pytest:

* **the engine**: when no Docker engine answers, Debian's ``docker.io`` package is installed
  (``apt-get install``, non-interactive, no standard input) and ``dockerd --iptables=false
  --bridge=none`` is started in the background, its log in ``.cache/image/dockerd.log``; then
  `docker info` must answer. dockerd picks its storage driver (overlay2 where the kernel and
  the file system allow it, else vfs, which works anywhere but copies every layer) and keeps
  its images in /var/lib/docker from one run to the next. Without a bridge, containers use
  ``--network host``: the broker, the sandbox and the processor all meet on 127.0.0.1. Only an
  engine this module started is stopped again (``run`` stops it at the end; ``prepare`` leaves
  it running, and ``engine-down`` stops it later). When no engine can be had at all (not root,
  or no apt-get to install one) the image tests are skipped with the reason; any other failure
  is a failure;
* **the base image, a stand-in**: the Dockerfile builds ``FROM python:3.12.12-slim-bookworm``,
  the official image, which cannot be pulled here (no container registry is reachable, only
  package registries). `build_stand_in` makes an image *of that name* from Debian's own
  packages instead: ``debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,
  ca-certificates bookworm`` from the machine's Debian mirror, a ``python`` link, this machine's
  CA bundle and pip settings (so pip in the build reaches the package index the way pip on this
  machine does), then ``docker import``. **It carries bookworm's python3, 3.11.2, not the 3.12
  of the FROM tag**, and is labelled as a stand-in (`STAND_IN_LABEL`). It is built once: an
  image of that name that already exists (a stand-in from an earlier run, or the real one where
  a registry is reachable) is used as it is. Making it takes about a minute (debootstrap);
* **the project's image**: ``docker build --network host -t tiktok-events-processor:dev .``
  from the Dockerfile *unchanged*, with the classic builder (the engine has no BuildKit
  frontend image to pull, and the Dockerfile needs nothing beyond the classic builder);
* **the check of what it holds**: its size, its user, and ``pip freeze`` inside it, which
  must equal requirements.lock's pins for the image's own Python and platform (markers
  evaluated there), less the build backend the Dockerfile uninstalls, plus only the venv's own
  pip and the project itself.

Environment handed to the command of ``run`` (read by tests/image/conftest.py):
``TIKTOK_EVENTS_IMAGE`` (the image to test) or ``TIKTOK_EVENTS_IMAGE_SKIP`` (why not), and
``TIKTOK_EVENTS_COMPOSE`` (the compose command, as JSON) or ``TIKTOK_EVENTS_COMPOSE_SKIP``.

Compose: Debian bookworm offers ``docker-compose`` 1.29.2 (the Python "v1"), not the compose
plugin. `compose_command` uses ``docker compose`` when the plugin is there and otherwise
installs and uses that package.

CLI: ``python -m devkit.image prepare`` (engine, base image, build, check; leaves the engine
running), ``python -m devkit.image run [--] COMMAND...`` (the same, then COMMAND, then stops
what it started; exits with COMMAND's status), ``python -m devkit.image engine-down``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from devkit import proc
from devkit.lock import RUNTIME_LOCK, Pin, build_requirements, parse_lock, read_pyproject

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache" / "image"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERD_LOG = CACHE_DIR / "dockerd.log"
DOCKERD_PID = CACHE_DIR / "dockerd.pid"
BUILD_LOG = CACHE_DIR / "build.log"
REPORT = CACHE_DIR / "report.json"

#: The tag docker-compose.yml gives the image, so compose finds the one built here.
IMAGE = "tiktok-events-processor:dev"
#: The Debian packages of the stand-in base image.
STAND_IN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
#: Label of the stand-in base image; its value is the Python version it carries.
STAND_IN_LABEL = "org.tiktok-events.stand-in-python"

IMAGE_ENV = "TIKTOK_EVENTS_IMAGE"
SKIP_ENV = "TIKTOK_EVENTS_IMAGE_SKIP"
COMPOSE_ENV = "TIKTOK_EVENTS_COMPOSE"
COMPOSE_SKIP_ENV = "TIKTOK_EVENTS_COMPOSE_SKIP"

_APT_TIMEOUT_S = 900.0
_DEBOOTSTRAP_TIMEOUT_S = 1800.0
_BUILD_TIMEOUT_S = 1800.0
_ENGINE_START_TIMEOUT_S = 90.0
_ENGINE_STOP_TIMEOUT_S = 60.0
#: PATH, LANG and CMD as the official python image sets them. PATH matters: the Dockerfile
#: writes ``ENV PATH=/opt/venv/bin:$PATH``, and an imported image has no PATH of its own.
_BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
#: pip settings of this machine that make no sense inside an image (local paths).
_PIP_SETTINGS_LEFT_OUT = frozenset({"find-links", "cert", "client-cert", "log", "cache-dir"})


class ImageError(RuntimeError):
    """The engine, the base image, the build or the check failed; the message says why."""


class EngineUnavailable(ImageError):
    """No Docker engine answers and none can be installed or started here: skip, not fail."""


# --------------------------------------------------------------------------------------------
# Running commands
# --------------------------------------------------------------------------------------------


def _run(
    command: Sequence[str],
    what: str,
    timeout: float = 120.0,
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    return proc.run(command, what=what, timeout=timeout, error=ImageError, env=env, check=check)


def docker(
    *args: str, what: str | None = None, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The docker CLI; raises `ImageError` with its output when it fails (with ``check``)."""
    return _run(["docker", *args], what or f"docker {args[0]}", timeout, check=check)


def _apt_install(*packages: str) -> None:
    """``apt-get install`` without questions; ``apt-get update`` once when a package is unknown."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt-get may be at work on this machine: wait for its lock instead of failing.
    wait = ("-o", "DPkg::Lock::Timeout=300")
    command = ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", *packages]
    what = f"apt-get install {' '.join(packages)}"
    if _run(command, what, _APT_TIMEOUT_S, env=env, check=False).returncode == 0:
        return
    _run(["apt-get", *wait, "update", "-q"], "apt-get update", _APT_TIMEOUT_S, env=env)
    _run(command, what, _APT_TIMEOUT_S, env=env)


def _say(message: str) -> None:
    print(f"image: {message}", flush=True)


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Engine:
    """The Docker engine in use; `pid` is set when this module started it."""

    version: str
    driver: str
    pid: int | None = None

    @property
    def started_here(self) -> bool:
        return self.pid is not None


def engine_info() -> tuple[str, str] | None:
    """(server version, storage driver) when an engine answers, else None."""
    if shutil.which("docker") is None:
        return None
    try:
        done = _run(
            ["docker", "info", "--format", "engine {{.ServerVersion}} {{.Driver}}"],
            "docker info",
            30,
            check=False,
        )
    except ImageError:
        return None
    if done.returncode != 0:
        return None
    # Warnings (stderr, merged into the output) may come before or after the line asked for.
    for line in done.stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "engine":
            return words[1], words[2]
    return None


def _why_no_engine() -> str | None:
    """Why no engine can be installed or started here, or None when one can."""
    if os.geteuid() != 0:
        return "not root: dockerd cannot be installed or started by this user"
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        return "no dockerd and no apt-get to install Debian's docker.io package"
    return None


def ensure_engine(*, tie_to_this_process: bool = False) -> Engine:
    """An engine that answers: the one running, or dockerd started here (installed if needed).

    With `tie_to_this_process` the dockerd started here gets SIGKILL if this process dies
    without stopping it (a killed ``make``), so no engine is left behind by accident.
    """
    info = engine_info()
    if info is not None:
        return Engine(*info)
    reason = _why_no_engine()
    if reason is not None:
        raise EngineUnavailable(reason)
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        _say("no Docker engine: installing Debian's docker.io package")
        _apt_install("docker.io")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    prefix = proc.die_with_parent_prefix() if tie_to_this_process else ()
    command = [*prefix, "dockerd", "--iptables=false", "--bridge=none"]
    with DOCKERD_LOG.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        daemon = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for the tests does not reach the engine first.
            start_new_session=True,
        )
    DOCKERD_PID.write_text(f"{daemon.pid}\n")
    deadline = time.monotonic() + _ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = engine_info()
        if info is not None:
            _say(f"started dockerd {info[0]} (pid {daemon.pid}, storage driver {info[1]})")
            return Engine(*info, pid=daemon.pid)
        if daemon.poll() is not None:
            DOCKERD_PID.unlink(missing_ok=True)
            raise ImageError(
                f"dockerd exited ({daemon.returncode}) before answering:\n"
                f"{proc.file_tail(DOCKERD_LOG)}"
            )
        time.sleep(0.5)
    stop_engine(Engine("?", "?", pid=daemon.pid))
    raise ImageError(
        f"dockerd did not answer within {_ENGINE_START_TIMEOUT_S:g} s:\n"
        f"{proc.file_tail(DOCKERD_LOG)}"
    )


def stop_engine(engine: Engine) -> None:
    """Stop the engine if this module started it (its containers stop with it)."""
    if engine.pid is None:
        return
    proc.terminate_pid(engine.pid, _ENGINE_STOP_TIMEOUT_S)
    _reap(engine.pid)
    DOCKERD_PID.unlink(missing_ok=True)
    _say(f"stopped the dockerd started here (pid {engine.pid})")


def _reap(pid: int, timeout: float = 10.0) -> None:
    """Collect the exit status of our child `pid`, so it leaves no zombie behind.

    A multi-threaded program such as dockerd shows as a zombie as soon as its main thread
    exits, but can be waited for only once its last thread has: hence the polling.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return  # not our child (started by an earlier run): its parent reaps it
        time.sleep(0.05)


def engine_down() -> bool:
    """Stop the dockerd that an earlier ``prepare`` started; False when there is none."""
    try:
        pid = int(DOCKERD_PID.read_text().strip())
    except (OSError, ValueError):
        return False
    if not proc.pid_alive(pid) or "dockerd" not in _command_line(pid):
        DOCKERD_PID.unlink(missing_ok=True)
        return False
    stop_engine(Engine("?", "?", pid=pid))
    return True


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# The Dockerfile's base image and its stand-in
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Base:
    """The image the Dockerfile builds FROM, and the Debian release its tag names."""

    ref: str
    release: str


def dockerfile_base(path: Path = DOCKERFILE) -> Base:
    """The one base image of every stage (``ARG`` defaults substituted)."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    refs: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        keyword = words[0].upper()
        if keyword == "ARG" and not refs and len(words) > 1 and "=" in words[1]:
            name, _, value = words[1].partition("=")
            args[name] = value
        elif keyword == "FROM":
            ref = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[1])
            if ref not in stages:
                refs.append(ref)
            if len(words) >= 4 and words[2].upper() == "AS":
                stages.add(words[3])
    if len(set(refs)) != 1 or "$" in refs[0]:
        raise ImageError(f"{path.name}: expected one base image for every stage, found {refs}")
    release = args.get("DEBIAN_RELEASE") or refs[0].rsplit("-", 1)[-1]
    return Base(ref=refs[0], release=release)


@dataclass(frozen=True, slots=True)
class AptSource:
    """One ``deb`` source of this machine's apt configuration."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    keyring: str | None


APT_DIR = Path("/etc/apt")


def apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """The ``deb`` sources apt reads: sources.list, then sources.list.d/*.list and *.sources."""
    found: list[AptSource] = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        with contextlib.suppress(OSError):
            found += [s for s in map(_one_line_source, path.read_text("utf-8").splitlines()) if s]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text("utf-8")):
                found += _deb822_sources(stanza)
    return found


def _one_line_source(line: str) -> AptSource | None:
    """``deb [signed-by=K] URI SUITE COMPONENT...``; None for anything else."""
    words = line.split("#", 1)[0].split()
    if len(words) < 3 or words[0] != "deb":
        return None
    options = ""
    if words[1].startswith("["):
        end = next((i for i, w in enumerate(words) if w.endswith("]")), len(words) - 1)
        options, words = " ".join(words[1 : end + 1]), [words[0], *words[end + 1 :]]
    if len(words) < 4:
        return None
    signed = re.search(r"signed-by=([^\s\]]+)", options)
    return AptSource(words[1], (words[2],), tuple(words[3:]), signed.group(1) if signed else None)


def _deb822_sources(stanza: str) -> list[AptSource]:
    """The sources of one deb822 stanza (``Types: deb``, ``URIs:``, ``Suites:``, ...)."""
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        key, sep, value = line.partition(":")
        if sep and line.strip() and not line.startswith(("#", " ", "\t")):
            fields[key.strip().lower()] = value.strip()
    if "deb" not in fields.get("types", "").split():
        return []
    if fields.get("enabled", "yes").lower() == "no":
        return []
    suites = tuple(fields.get("suites", "").split())
    components = tuple(fields.get("components", "").split())
    keyring = fields.get("signed-by") or None
    return [AptSource(uri, suites, components, keyring) for uri in fields.get("uris", "").split()]


def debian_mirror(release: str, apt_dir: Path = APT_DIR) -> AptSource:
    """This machine's apt source of Debian `release` main: debootstrap uses that mirror."""
    for source in apt_sources(apt_dir):
        if release in source.suites and "main" in source.components:
            return source
    raise ImageError(
        f"no apt source of this machine serves Debian {release} main "
        f"({apt_dir}/sources.list, {apt_dir}/sources.list.d/): the stand-in base image needs one"
    )


def machine_pip_settings() -> dict[str, str]:
    """This machine's pip settings (its config files and PIP_* variables), as pip reads them."""
    done = _run([sys.executable, "-m", "pip", "config", "list"], "pip config list", 60, check=False)
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = key.rpartition(".")[2]
        settings[name] = value.strip().strip("'\"")
    return settings


def ca_bundle() -> Path:
    """The CA bundle this machine's pip trusts (its ``cert`` setting, else the system's)."""
    for candidate in (
        machine_pip_settings().get("cert"),
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageError("no CA bundle found for pip (pip's cert setting, SSL_CERT_FILE)")


def _pip_conf(settings: Mapping[str, str], cert: str) -> str:
    lines = ["# This machine's pip settings, copied into the stand-in base image.", "[global]"]
    for name, value in sorted(settings.items()):
        if name not in _PIP_SETTINGS_LEFT_OUT:
            lines.append(f"{name} = {value}")
    lines.append(f"cert = {cert}")
    return "\n".join(lines) + "\n"


def _dpkg_version(root: Path, package: str) -> str:
    """The upstream version of an installed package in a Debian root (``3.11.2`` of
    ``3.11.2-1+b1``)."""
    status = (root / "var/lib/dpkg/status").read_text(encoding="utf-8", errors="replace")
    for stanza in status.split("\n\n"):
        if re.search(rf"(?m)^Package: {re.escape(package)}$", stanza):
            found = re.search(r"(?m)^Version: (?:\d+:)?([^-\s]+)", stanza)
            if found:
                return found.group(1)
    raise ImageError(f"{package} is not installed in {root}")


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    return [p for p in points if p.startswith(prefix)]


def _remove_root(root: Path) -> None:
    """Delete a debootstrap target, but never through a mount debootstrap left behind."""
    for point in sorted(_mounts_under(root), reverse=True):
        _run(["umount", "--lazy", point], f"umount {point}", 60, check=False)
    left = _mounts_under(root)
    if left:
        raise ImageError(f"{root} still has mounts ({', '.join(left)}); not deleting it")
    shutil.rmtree(root, ignore_errors=True)


def image_label(ref: str, label: str) -> str | None:
    """A label of a local image; None when the image or the label is missing."""
    done = docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref, check=False)
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout.strip() or "null") or {}
    value = labels.get(label)
    return value if isinstance(value, str) else None


def image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def build_stand_in(base: Base) -> str:
    """The stand-in for ``base.ref``, made from Debian's packages; returns its Python version."""
    if shutil.which("debootstrap") is None:
        _say("installing debootstrap")
        _apt_install("debootstrap")
    mirror = debian_mirror(base.release)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="stand-in-", dir=CACHE_DIR))
    root = work / "root"
    try:
        began = time.monotonic()
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(STAND_IN_PACKAGES)}"]
        if mirror.keyring and Path(mirror.keyring).is_file():
            command.append(f"--keyring={mirror.keyring}")
        _say(f"debootstrap {base.release} from {mirror.uri} (a few minutes, once)")
        _run(
            [*command, base.release, str(root), mirror.uri],
            "debootstrap",
            _DEBOOTSTRAP_TIMEOUT_S,
        )
        python = _dpkg_version(root, "python3")
        (root / "usr/bin/python").unlink(missing_ok=True)
        (root / "usr/bin/python").symlink_to("python3")
        # pip inside the build trusts what pip on this machine trusts, and is set up alike.
        cert = "/etc/ssl/certs/ca-certificates.crt"
        shutil.copyfile(ca_bundle(), root / cert.lstrip("/"))
        (root / "etc/pip.conf").write_text(_pip_conf(machine_pip_settings(), cert))
        # What the official slim image leaves out too: downloaded packages and apt lists.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        tarball = work / "root.tar"
        _run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
            "packing the stand-in root",
            600,
        )
        _remove_root(root)
        description = (
            f"A stand-in for {base.ref}: Debian {base.release} from its packages "
            f"(debootstrap), with Python {python}. Not the official image."
        )
        changes = [
            *_BASE_CHANGES,
            f"LABEL {STAND_IN_LABEL}={python}",
            f"LABEL org.opencontainers.image.description={json.dumps(description)}",
        ]
        docker(
            "import",
            *(arg for change in changes for arg in ("--change", change)),
            str(tarball),
            base.ref,
            what="docker import",
            timeout=600,
        )
        _say(f"stand-in {base.ref} made in {time.monotonic() - began:.0f} s (Python {python})")
        return python
    finally:
        _remove_root(work)


def ensure_base(base: Base) -> str:
    """Make sure the base image exists; describes what it is."""
    if not image_exists(base.ref):
        build_stand_in(base)
    python = image_label(base.ref, STAND_IN_LABEL)
    if python is None:
        return f"{base.ref} (not a stand-in made here: used as it is)"
    wanted = base.ref.partition(":")[2].split("-", 1)[0]
    return (
        f"{base.ref} is a STAND-IN made from Debian {base.release}'s packages, because the "
        f"official python image cannot be pulled here: it carries Python {python}, not the "
        f"{wanted} of the tag"
    )


# --------------------------------------------------------------------------------------------
# The project's image and what it holds
# --------------------------------------------------------------------------------------------


def image_id(ref: str) -> str | None:
    done = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def build_image(tag: str = IMAGE) -> float:
    """``docker build`` of the Dockerfile as it is; returns the seconds it took."""
    previous = image_id(tag)
    began = time.monotonic()
    # The classic builder: BuildKit would first pull its frontend (the syntax line) from a
    # registry, and the Dockerfile uses nothing the classic builder lacks.
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    command = ["docker", "build", "--network", "host", "--tag", tag, "--file", str(DOCKERFILE)]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    done = _run([*command, str(REPO_ROOT)], "docker build", _BUILD_TIMEOUT_S, env=env, check=False)
    BUILD_LOG.write_text(done.stdout)
    if done.returncode != 0:
        raise ImageError(
            f"docker build failed (exit {done.returncode}); log {BUILD_LOG}:\n"
            f"{proc.tail(done.stdout)}"
        )
    took = time.monotonic() - began
    steps = len(re.findall(r"(?m)^Step \d+/\d+ :", done.stdout))
    cached = done.stdout.count("---> Using cache")
    _say(f"built {tag} in {took:.0f} s ({cached} of {steps} steps from the cache)")
    current = image_id(tag)
    if previous and previous != current:
        # The build before this one, now untagged: only that image, never anyone else's.
        docker("image", "rm", previous, check=False)
    return took


@dataclass(frozen=True, slots=True)
class Contents:
    """What ``pip freeze --all`` reports inside the image, and the markers' environment there."""

    freeze: str
    environment: dict[str, str]
    installed: dict[NormalizedName, Version] = field(default_factory=dict)
    editable: dict[NormalizedName, Version] = field(default_factory=dict)


_INSIDE = """
import json, os, platform, subprocess, sys
environment = {
    "implementation_name": sys.implementation.name,
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}
freeze = subprocess.run(
    [sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
).stdout
print(json.dumps({"environment": environment, "freeze": freeze}))
"""


def image_contents(tag: str = IMAGE) -> Contents:
    """``pip freeze --all`` run inside the image, as its own user, on its read-only root."""
    done = docker(
        "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--entrypoint", "python", tag, "-c", _INSIDE,
        what="pip freeze in the image",
    )  # fmt: skip
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    freeze: str = doc["freeze"]
    installed: dict[NormalizedName, Version] = {}
    editable: dict[NormalizedName, Version] = {}
    for line in freeze.splitlines():
        pinned = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if pinned:
            installed[canonicalize_name(pinned.group(1))] = Version(pinned.group(2))
            continue
        # "# Editable install with no version control (tiktok-events-processor==0.1.0)"
        comment = re.search(r"\(([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\)", line)
        if line.startswith("#") and comment:
            editable[canonicalize_name(comment.group(1))] = Version(comment.group(2))
    return Contents(freeze, dict(doc["environment"]), installed, editable)


def lock_mismatches(contents: Contents, pins: Sequence[Pin], root: Path = REPO_ROOT) -> list[str]:
    """How the image's packages differ from the lock's pins for its platform; empty if equal.

    Expected: every pin whose marker holds inside the image, less the build backend (the
    Dockerfile uninstalls it once the project is installed). Allowed besides: the venv's own
    pip and the project itself, installed editable at its pyproject.toml version.
    """
    pyproject = read_pyproject(root / "pyproject.toml")
    project = canonicalize_name(pyproject["project"]["name"])
    build_only = {canonicalize_name(Requirement(r).name) for r in build_requirements(pyproject)}
    wanted = {
        pin.name: pin.version
        for pin in pins
        if pin.marker is None or Marker(pin.marker).evaluate(contents.environment)
    }
    problems = []
    for name, version in sorted(wanted.items()):
        found = contents.installed.get(name)
        if name in build_only:
            if found is not None:
                problems.append(f"{name} {found}: the build backend was left in the image")
        elif found is None:
            problems.append(f"{name}: pinned {version} by {RUNTIME_LOCK.path}, not installed")
        elif found != version:
            problems.append(f"{name}: {found} installed, {version} pinned")
    for name, version in sorted(contents.installed.items()):
        if name not in wanted and name != "pip":
            problems.append(f"{name} {version}: installed, but {RUNTIME_LOCK.path} does not pin it")
    expected_project = Version(pyproject["project"]["version"])
    if contents.editable.get(project) != expected_project:
        problems.append(f"{project}: expected an editable install of {expected_project}")
    return problems


def check_image(tag: str = IMAGE) -> dict[str, object]:
    """Size, user and packages of the image; raises `ImageError` when they are not the lock's."""
    done = docker("image", "inspect", "--format", "{{.Size}} {{json .Config.User}}", tag)
    size_text, _, user_json = done.stdout.strip().partition(" ")
    size = int(size_text)
    user = json.loads(user_json)
    contents = image_contents(tag)
    pins = parse_lock(
        (REPO_ROOT / RUNTIME_LOCK.path).read_text(encoding="utf-8"), RUNTIME_LOCK.path
    )
    base_size = int(
        docker("image", "inspect", "--format", "{{.Size}}", dockerfile_base().ref).stdout
    )
    added = (size - base_size) / 1e6
    _say(f"{tag}: {size / 1e6:.0f} MB ({added:.0f} MB on the base image), user {user}")
    _say(
        f"Python {contents.environment['python_full_version']} on "
        f"{contents.environment['platform_machine']}; pip freeze --all in the image:"
    )
    for line in contents.freeze.strip().splitlines():
        print(f"    {line}")
    problems = lock_mismatches(contents, pins)
    if problems:
        raise ImageError(
            f"the image's packages are not {RUNTIME_LOCK.path}'s pins:\n  " + "\n  ".join(problems)
        )
    _say(f"the packages are exactly {RUNTIME_LOCK.path}'s pins for this platform")
    return {
        "image": tag,
        "size_bytes": size,
        "base_size_bytes": base_size,
        "user": user,
        "python": contents.environment["python_full_version"],
        "packages": {str(k): str(v) for k, v in sorted(contents.installed.items())},
    }


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------


def compose_command() -> tuple[list[str] | None, str]:
    """The compose command to use and what it is, or (None, why there is none)."""
    plugin = _run(["docker", "compose", "version", "--short"], "docker compose", 30, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"], f"the compose plugin {plugin.stdout.strip()}"
    if shutil.which("docker-compose") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return None, "no compose plugin, no docker-compose, and no apt-get to install it"
        _say("no compose: installing Debian's docker-compose package")
        try:
            _apt_install("docker-compose")
        except ImageError as exc:
            return None, f"Debian's docker-compose package did not install: {exc}"
    done = _run(["docker-compose", "version", "--short"], "docker-compose", 60, check=False)
    if done.returncode != 0:
        return None, f"docker-compose does not run:\n{proc.tail(done.stdout)}"
    return ["docker-compose"], f"docker-compose {done.stdout.strip()} (Debian's package)"


# --------------------------------------------------------------------------------------------
# Preparation and the CLI
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    engine: Engine
    environment: dict[str, str]


def prepare(*, tie_engine: bool = False) -> Prepared:
    """Engine, base image, build and check; the environment the image tests need.

    Raises `EngineUnavailable` when no engine can be had, `ImageError` on any other failure
    (the engine started here is stopped again first).
    """
    began = time.monotonic()
    engine = ensure_engine(tie_to_this_process=tie_engine)
    try:
        if not engine.started_here:
            _say(f"using the running Docker engine {engine.version} ({engine.driver})")
        base = dockerfile_base()
        base_description = ensure_base(base)
        _say(base_description)
        build_seconds = build_image(IMAGE)
        report = check_image(IMAGE)
        compose, compose_description = compose_command()
        _say(f"compose: {compose_description}")
    except BaseException:
        stop_engine(engine)
        raise
    environment = {IMAGE_ENV: IMAGE}
    if compose is None:
        environment[COMPOSE_SKIP_ENV] = compose_description
    else:
        environment[COMPOSE_ENV] = json.dumps(compose)
    report.update(
        base=base_description,
        build_seconds=round(build_seconds, 1),
        prepare_seconds=round(time.monotonic() - began, 1),
        compose=compose_description,
        engine=f"{engine.version} ({engine.driver})",
    )
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    _say(f"ready in {time.monotonic() - began:.0f} s")
    return Prepared(engine, environment)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit, so `finally` blocks stop what was started."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_with_image(command: Sequence[str]) -> int:
    """Prepare, run `command` with the image tests' environment, stop what was started."""
    with _sigterm_unwinds():
        try:
            prepared = prepare(tie_engine=True)
        except EngineUnavailable as exc:
            message = f"no Docker engine can be started here ({exc}): the image tests are SKIPPED"
            print(f"\n!!! {message}\n", flush=True)
            return _run_command(command, {SKIP_ENV: message})
        try:
            return _run_command(command, prepared.environment)
        finally:
            stop_engine(prepared.engine)


def _run_command(command: Sequence[str], environment: Mapping[str, str]) -> int:
    if not command:
        return 0
    child = subprocess.Popen(
        list(command), env={**os.environ, **environment}, stdin=subprocess.DEVNULL
    )
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.image",
        description="Build the project's image on a local Docker engine (started if needed) "
        "and check it; run the image tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="engine, base image, build, check; the engine keeps running")
    runner = sub.add_parser("run", help="prepare, run COMMAND, stop what was started")
    runner.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    sub.add_parser("engine-down", help="stop the dockerd an earlier prepare started")
    args = parser.parse_args(argv)
    try:
        if args.command == "engine-down":
            _say("stopped" if engine_down() else "no dockerd started by devkit.image is running")
            return 0
        if args.command == "prepare":
            prepared = prepare()
            for name, value in sorted(prepared.environment.items()):
                print(f"{name}={value}")
            if prepared.engine.started_here:
                _say("the engine keeps running: python -m devkit.image engine-down stops it")
            return 0
        command = list(args.argv)
        if command[:1] == ["--"]:
            command = command[1:]
        return run_with_image(command)
    except EngineUnavailable as exc:
        print(f"image: SKIPPED: no Docker engine can be started here: {exc}", file=sys.stderr)
        return 0
    except ImageError as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
