"""The locked dependencies: what the image and the development venv install, pinned with hashes.

Two lock files at the top of the repository are compiled from pyproject.toml by uv
(``uv pip compile --generate-hashes --universal``):

* ``requirements.lock``: the runtime dependencies (``[project].dependencies``) plus the build
  backend (``[build-system].requires``). The Dockerfile installs exactly this file with
  ``pip install --no-deps --require-hashes``, then the project itself with ``--no-deps
  --no-build-isolation``, so an image build resolves nothing and runs only code whose SHA-256
  was recorded here;
* ``requirements-test.lock``: the same plus the ``test`` extra, for ``make install``. It is
  compiled with ``requirements.lock`` as a constraint, so the tests run against the versions
  the image ships.

Both are *universal*: one resolution for every platform and every Python from the floor of
``requires-python`` up, with environment markers where a dependency is conditional and the hash
of every wheel of each pinned release (x86_64 and aarch64 Linux, CPython 3.11 on the development
machines and 3.12 in the image alike). The build backend is fed to uv on standard input, which
is why its pins carry no ``# via`` annotation.

`check` compares the locks with pyproject.toml without any network: every requirement is pinned
(``name==version``) to a version its specifier allows, every pin has a sha256 hash, nothing is
pinned as a direct dependency that pyproject.toml no longer asks for, and the two locks agree on
every package they share. `make test` runs it first; its message names each stale dependency
and the command that fixes them all (``make lock``).

CLI: ``python -m devkit.lock update [--upgrade]`` recompiles both locks (``make lock``; without
``--upgrade`` uv keeps every current pin that still fits, so only what pyproject.toml forces
changes); ``python -m devkit.lock check`` exits 1 with the problems, one a line.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = "pyproject.toml"
#: What a developer runs to bring the locks in line; every message of `check` ends with it.
FIX_COMMAND = "make lock"

#: Where the locks are installed: CPython 3.11 (the development machines and CI) and 3.12 (the
#: image), on x86_64 and aarch64 Linux. A requirement whose marker is false on every one of them
#: needs no pin.
TARGET_PYTHONS = ("3.11", "3.12")
TARGET_MACHINES = ("x86_64", "aarch64")

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_UV_TIMEOUT_S = 600.0


class LockError(RuntimeError):
    """A lock cannot be read or compiled; the message is written for a human (the CLI prints it)."""


@dataclass(frozen=True, slots=True)
class LockFile:
    """One lock file and what it is compiled from."""

    path: str  # relative to the repository root
    extras: tuple[str, ...]  # optional-dependency groups of pyproject.toml it includes
    constraint: str | None = None  # another lock whose pins this one keeps


RUNTIME_LOCK = LockFile("requirements.lock", ())
TEST_LOCK = LockFile("requirements-test.lock", ("test",), constraint=RUNTIME_LOCK.path)
LOCKS = (RUNTIME_LOCK, TEST_LOCK)


@dataclass(frozen=True, slots=True)
class Pin:
    """One ``name==version`` line of a lock, with its hashes and uv's ``# via`` annotation."""

    name: NormalizedName
    version: Version
    marker: str | None
    hashes: tuple[str, ...]
    via: tuple[str, ...]
    line: int

    @property
    def direct(self) -> bool:
        """Whether pyproject.toml asked for it (rather than another pinned package only).

        uv annotates a requirement of pyproject.toml with ``<project> (pyproject.toml)``, one of
        another package with that package's name, and one read from standard input (the build
        backend) not at all. ``-c FILE`` only says that a constraint file also names it.
        """
        sources = [v for v in self.via if not v.startswith("-")]
        return not sources or any(v.endswith("(pyproject.toml)") for v in sources)


# --------------------------------------------------------------------------------------------
# Reading pyproject.toml and the locks
# --------------------------------------------------------------------------------------------


def read_pyproject(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LockError(f"{path.name}: cannot be read: {exc}") from exc


def build_requirements(pyproject: Mapping[str, Any]) -> list[str]:
    requires = pyproject.get("build-system", {}).get("requires", [])
    return [str(r) for r in requires]


def wanted(pyproject: Mapping[str, Any], extras: Iterable[str]) -> list[Requirement]:
    """What a lock with these extras must pin: the runtime dependencies, the extras' and the
    build backend's requirements, in that order."""
    project = pyproject.get("project", {})
    optional = project.get("optional-dependencies", {})
    texts = [str(r) for r in project.get("dependencies", [])]
    for extra in extras:
        if extra not in optional:
            raise LockError(f"{PYPROJECT}: no optional dependency group {extra!r}")
        texts += [str(r) for r in optional[extra]]
    texts += build_requirements(pyproject)
    requirements = []
    for text in texts:
        try:
            requirements.append(Requirement(text))
        except InvalidRequirement as exc:
            raise LockError(f"{PYPROJECT}: invalid requirement {text!r}: {exc}") from exc
    return requirements


def python_floor(pyproject: Mapping[str, Any]) -> str:
    """The lowest Python of ``requires-python`` (``>=3.11`` → ``3.11``): where a universal
    resolution starts."""
    text = str(pyproject.get("project", {}).get("requires-python", ""))
    floors = [s.version for s in SpecifierSet(text) if s.operator == ">="]
    if not floors:
        raise LockError(f"{PYPROJECT}: requires-python needs a lower bound such as '>=3.11'")
    return max(floors, key=Version)


def parse_lock(text: str, name: str) -> list[Pin]:
    """The pins of a lock written by ``uv pip compile --generate-hashes``.

    Only exact pins (``name==version``, optionally ``; marker``) followed by ``--hash`` options
    are accepted: a range, a URL, an editable or an index option has no place in a lock.
    """
    pins: list[Pin] = []
    via: dict[int, list[str]] = {}  # pin index → what uv says it is there for
    pending = ""  # a requirement continued with a backslash
    start = 0
    in_via = False
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if pending or (stripped and not stripped.startswith("#")):
            start = start if pending else number
            pending += stripped.removesuffix("\\").strip() + " "
            if not stripped.endswith("\\"):
                pins.append(_parse_pin(pending.strip(), name, start))
                pending, in_via = "", False
            continue
        # A comment or a blank line. Indented comments after a pin are uv's annotation of it,
        # "# via NAME" or "# via" followed by one "#   NAME" a line; the header is not indented.
        if not pins or not raw[:1].isspace():
            continue
        comment = stripped.removeprefix("#").strip()
        sources = via.setdefault(len(pins) - 1, [])
        if comment == "via":
            in_via = True
        elif comment.startswith("via "):
            sources.append(comment.removeprefix("via ").strip())
            in_via = False
        elif in_via and comment:
            sources.append(comment)
    if pending:
        raise LockError(f"{name}:{start}: the last line ends with a continuation backslash")
    return [replace(pin, via=tuple(via.get(index, ()))) for index, pin in enumerate(pins)]


def _parse_pin(line: str, name: str, number: int) -> Pin:
    where = f"{name}:{number}"
    if line.startswith("-"):
        raise LockError(f"{where}: unexpected option in a lock: {line.split(maxsplit=1)[0]}")
    requirement_text, _, options = line.partition(" --")
    options = f"--{options}" if options else ""
    try:
        requirement = Requirement(requirement_text)
    except InvalidRequirement as exc:
        raise LockError(f"{where}: not a requirement: {requirement_text!r}") from exc
    specifiers = list(requirement.specifier)
    if (
        requirement.url
        or len(specifiers) != 1
        or specifiers[0].operator != "=="
        or "*" in specifiers[0].version
    ):
        raise LockError(f"{where}: {requirement_text!r} is not pinned to one version (name==X)")
    hashes = []
    for option in options.split():
        if not option.startswith("--hash="):
            raise LockError(f"{where}: unexpected option {option!r}")
        hashes.append(option.removeprefix("--hash="))
    return Pin(
        name=canonicalize_name(requirement.name),
        version=Version(specifiers[0].version),
        marker=str(requirement.marker) if requirement.marker else None,
        hashes=tuple(hashes),
        via=(),
        line=number,
    )


# --------------------------------------------------------------------------------------------
# The offline check
# --------------------------------------------------------------------------------------------


def _target_environments() -> list[dict[str, str]]:
    return [
        {
            "python_version": python,
            "python_full_version": f"{python}.0",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "os_name": "posix",
            "platform_machine": machine,
            "extra": "",
        }
        for python in TARGET_PYTHONS
        for machine in TARGET_MACHINES
    ]


def _needed_on_a_target(requirement: Requirement) -> bool:
    marker = requirement.marker
    return marker is None or any(marker.evaluate(env) for env in _target_environments())


def lock_problems(pyproject: Mapping[str, Any], lock: LockFile, pins: Sequence[Pin]) -> list[str]:
    """Where one lock no longer matches pyproject.toml; empty when it does."""
    problems = []
    by_name: dict[NormalizedName, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
    requirements = wanted(pyproject, lock.extras)

    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if not _needed_on_a_target(requirement):
            continue
        found = by_name.get(name)
        if not found:
            problems.append(
                f"{lock.path}: {requirement.name} is not pinned "
                f"(pyproject.toml asks for {str(requirement)!r})"
            )
            continue
        for pin in found:
            if not requirement.specifier.contains(pin.version, prereleases=True):
                problems.append(
                    f"{lock.path}:{pin.line}: {pin.name}=={pin.version} is outside "
                    f"{str(requirement)!r} of pyproject.toml"
                )

    asked_for = {canonicalize_name(r.name) for r in requirements}
    for pin in pins:
        if pin.direct and pin.name not in asked_for:
            problems.append(
                f"{lock.path}:{pin.line}: {pin.name}=={pin.version} is pinned for "
                f"pyproject.toml, which no longer asks for it"
            )
        if not any(_SHA256.fullmatch(h) for h in pin.hashes):
            problems.append(f"{lock.path}:{pin.line}: {pin.name}=={pin.version} has no sha256 hash")
    return problems


def agreement_problems(locks: Mapping[LockFile, Sequence[Pin]]) -> list[str]:
    """Each lock compiled with another as its constraint pins the same versions as that one."""
    problems = []
    for lock, pins in locks.items():
        parent = next((p for p in locks if p.path == lock.constraint), None)
        if parent is None:
            continue
        parent_versions: dict[NormalizedName, set[Version]] = {}
        for pin in locks[parent]:
            parent_versions.setdefault(pin.name, set()).add(pin.version)
        for pin in pins:
            expected = parent_versions.get(pin.name)
            if expected is not None and pin.version not in expected:
                shown = ", ".join(sorted(str(v) for v in expected))
                problems.append(
                    f"{lock.path}:{pin.line}: {pin.name}=={pin.version}, but {parent.path} "
                    f"pins {shown}"
                )
    return problems


def check(root: Path = REPO_ROOT, locks: Sequence[LockFile] = LOCKS) -> list[str]:
    """Every problem of the locks under `root`, one a line; empty when they match pyproject.toml.

    Reads files only: no network, no resolver.
    """
    pyproject = read_pyproject(root / PYPROJECT)
    problems: list[str] = []
    parsed: dict[LockFile, list[Pin]] = {}
    for lock in locks:
        path = root / lock.path
        if not path.is_file():
            problems.append(f"{lock.path}: missing")
            continue
        parsed[lock] = pins = parse_lock(path.read_text(encoding="utf-8"), lock.path)
        problems += lock_problems(pyproject, lock, pins)
    return problems + agreement_problems(parsed)


def report(problems: Sequence[str]) -> str:
    lines = [f"  {p}" for p in problems]
    return "\n".join(
        [
            "the locked dependencies do not match pyproject.toml:",
            *lines,
            f"run `{FIX_COMMAND}` to recompile them (and commit the lock files)",
        ]
    )


# --------------------------------------------------------------------------------------------
# Compiling the locks with uv
# --------------------------------------------------------------------------------------------

#: Runs one command with `stdin` as its standard input in `cwd`; returns its exit status.
Runner = Callable[[Sequence[str], str, Path], int]


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[str, ...]
    stdin: str


def compile_commands(
    pyproject: Mapping[str, Any],
    uv: str,
    *,
    upgrade: bool = False,
    locks: Sequence[LockFile] = LOCKS,
) -> list[Command]:
    """The ``uv pip compile`` call of each lock, in order (a lock's constraint comes first).

    Paths are relative to the repository root, where the calls run, so that uv's annotations
    (``# via -c requirements.lock``) are the same on every machine.
    """
    build = build_requirements(pyproject)
    commands = []
    for lock in locks:
        args = [uv, "pip", "compile", PYPROJECT]
        if build:
            args.append("-")  # the build backend, from standard input
        for extra in lock.extras:
            args += ["--extra", extra]
        if lock.constraint:
            args += ["--constraint", lock.constraint]
        args += [
            "--generate-hashes",
            "--universal",
            "--python-version",
            python_floor(pyproject),
            "--custom-compile-command",
            FIX_COMMAND,
            "--output-file",
            lock.path,
        ]
        if upgrade:
            args.append("--upgrade")
        commands.append(Command(tuple(args), "".join(f"{r}\n" for r in build)))
    return commands


def find_uv() -> str:
    """uv from this interpreter's environment (the ``test`` extra installs it), else from PATH."""
    here = shutil.which("uv", path=os.path.dirname(sys.executable))
    found = here or shutil.which("uv")
    if found is None:
        raise LockError("uv is not installed: run `make install` (the test extra has it)")
    return found


def _run(args: Sequence[str], stdin: str, cwd: Path) -> int:
    # uv also prints the lock on standard output; its progress and errors go to stderr.
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        input=stdin,
        stdout=subprocess.DEVNULL,
        text=True,
        timeout=_UV_TIMEOUT_S,
        check=False,
    )
    return proc.returncode


def update(
    root: Path = REPO_ROOT,
    *,
    upgrade: bool = False,
    uv: str | None = None,
    run: Runner = _run,
    locks: Sequence[LockFile] = LOCKS,
) -> list[str]:
    """Recompiles every lock under `root`; returns ``<path>: updated|unchanged`` for each."""
    pyproject = read_pyproject(root / PYPROJECT)
    before = {lock.path: _read(root / lock.path) for lock in locks}
    commands = compile_commands(pyproject, uv or find_uv(), upgrade=upgrade, locks=locks)
    for lock, command in zip(locks, commands, strict=True):
        status = run(command.args, command.stdin, root)
        if status != 0:
            raise LockError(f"{lock.path}: uv pip compile failed (exit status {status})")
    return [
        f"{lock.path}: {'unchanged' if _read(root / lock.path) == before[lock.path] else 'updated'}"
        for lock in locks
    ]


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.lock",
        description="Compile the locked dependencies from pyproject.toml, or check them offline.",
    )
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="the repository (default: this one)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    update_parser = sub.add_parser("update", help="recompile the locks with uv (needs the index)")
    update_parser.add_argument(
        "--upgrade", action="store_true", help="newest allowed versions instead of keeping pins"
    )
    sub.add_parser("check", help="exit 1 when the locks do not match pyproject.toml (offline)")
    args = parser.parse_args(argv)

    try:
        if args.command == "update":
            for line in update(args.root, upgrade=args.upgrade):
                print(line)
        problems = check(args.root)
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if problems:
        print(f"error: {report(problems)}", file=sys.stderr)
        return 1
    print(f"{', '.join(lock.path for lock in LOCKS)}: match {PYPROJECT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
