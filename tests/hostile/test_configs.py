"""Configurations built to hurt, or written carelessly: every one must end with exit
status 1 and ``error: invalid configuration:`` followed by one line per problem, each
naming its place, within a time and memory bound, and never with a traceback.

The corpus is ``tests/hostile/configs/``. Each file's leading comments say what it
is; ``# expect: TEXT`` lines must appear in stderr and ``# env: NAME=VALUE`` lines
set the environment. Files too large to keep in the repository (2 MiB, a huge
string, too many values) are generated here.

Every file goes through :func:`processor.cli.main` in one child process (fast);
the cases that matter most also go through ``python -m processor`` on their own.
Children run under an address-space limit, so a regression fails instead of
eating the machine (the alias bomb once reached 16 GB).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_CONFIG, ROOT

CORPUS = Path(__file__).resolve().parent / "configs"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "processor.yaml"
MEMORY_LIMIT = 2 << 30  # bytes of address space; check-config needs about 300 MB
TIMEOUT_S = 60
#: The longest problem line: config.MAX_PROBLEM_CHARS plus the indent and the ellipsis.
MAX_LINE = 410


@dataclass(frozen=True)
class Case:
    path: Path
    expects: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def read_case(path: Path) -> Case:
    expects: list[str] = []
    env: dict[str, str] = {}
    for line in path.read_bytes().split(b"\n"):
        if not line.startswith(b"#"):
            break
        text = line.decode("utf-8", "replace")
        if text.startswith("# expect: "):
            expects.append(text.removeprefix("# expect: "))
        elif text.startswith("# env: "):
            name, _, value = text.removeprefix("# env: ").partition("=")
            env[name] = value
    return Case(path, tuple(expects), env)


CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))

BASE = (CORPUS / "missing-schema-file.yaml").read_text().replace("sign_up.v9", "sign_up.v1")
GENERATED: dict[str, tuple[str, tuple[str, ...]]] = {
    "oversized-2mib.yaml": (
        BASE + "# padding\n" * (2 * 1024 * 1024 // 10),
        ("larger than the 1 MiB a configuration may be",),
    ),
    "enormous-string.yaml": (
        BASE.replace("tiktok:\n", f"tiktok:\n  partner_name: {'x' * 900_000}\n"),
        ("tiktok.partner_name: value is longer than 64 characters",),
    ),
    "too-many-values.yaml": (
        BASE + "extra: [" + "1, " * 150_000 + "]\n",
        ("more than 100,000 values",),
    ),
}

#: Also run as `python -m processor check-config FILE`, one process each.
SUBPROCESS_CASES = (
    "alias-bomb.yaml",
    "binary-garbage.yaml",
    "kafka-unknown-setting-env.yaml",
    "nested-not-500.yaml",
    "not-utf8.yaml",
    "oversized-2mib.yaml",
    "schemas-dir-too-long.yaml",
    "endpoint-unclosed-ipv6.yaml",
)
#: And through `run` (which needs the token) and `preview`, which load the same way.
OTHER_COMMANDS = ("alias-bomb.yaml", "kafka-invalid-setting.yaml", "nested-not-500.yaml")


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_", "METRICS_"))
    }
    return {**env, **(extra or {})}


@dataclass
class Outcome:
    code: int | str | None
    stdout: str
    stderr: str
    seconds: float = 0.0


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    generated = tmp_path_factory.mktemp("generated")
    found = {path.name: read_case(path) for path in CORPUS_FILES}
    for name, (text, expects) in GENERATED.items():
        path = generated / name
        path.write_text(text)
        found[name] = Case(path, expects)
    return found


@pytest.fixture(scope="module")
def in_process(cases: dict[str, Case]) -> dict[str, Outcome]:
    """Every case, and the valid configurations, through cli.main in one child process."""
    jobs = [{"path": str(c.path), "env": c.env} for c in cases.values()]
    jobs += [{"path": str(p), "env": {}} for p in (EXAMPLE_CONFIG, COMPOSE_CONFIG)]
    done = subprocess.run(
        [sys.executable, "-m", "tests.hostile.run_corpus"],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=TIMEOUT_S,
        preexec_fn=limit_memory,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    by_path = {r["path"]: Outcome(r["code"], r["stdout"], r["stderr"]) for r in results}
    out = {name: by_path[str(c.path)] for name, c in cases.items()}
    out.update({p.name: by_path[str(p)] for p in (EXAMPLE_CONFIG, COMPOSE_CONFIG)})
    return out


def _command_lines(cases: dict[str, Case]) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    for name in SUBPROCESS_CASES:
        yield name, ["check-config", str(cases[name].path)], cases[name].env
    for name in OTHER_COMMANDS:
        path = str(cases[name].path)
        yield f"run:{name}", ["run", "--config", path], {"TIKTOK_ACCESS_TOKEN": "t-1"}
        preview = ["preview", "--config", path, "--topic", "web.signups", os.devnull]
        yield f"preview:{name}", preview, {}
    for path in (EXAMPLE_CONFIG, COMPOSE_CONFIG):
        yield path.name, ["check-config", str(path)], {}


@pytest.fixture(scope="module")
def subprocesses(cases: dict[str, Case]) -> dict[str, Outcome]:
    """`python -m processor …` for the chosen cases, all started at once, then awaited."""
    started = []
    for key, args, env in _command_lines(cases):
        process = subprocess.Popen(
            [sys.executable, "-m", "processor", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=clean_env(env),
            preexec_fn=limit_memory,  # noqa: PLW1509 - no threads run in the test process here
        )
        started.append((key, process, time.monotonic()))
    outcomes = {}
    for key, process, began in started:
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        outcomes[key] = Outcome(process.returncode, stdout, stderr, time.monotonic() - began)
    return outcomes


def names_a_place(place: str, path: Path) -> bool:
    """``FILE``, ``FILE:LINE``, ``FILE:LINE:COLUMN``, or a configuration path
    (``mappings[0].fields.user.email``), an environment variable, ``(top level)``."""
    if place.startswith(str(path)):
        return re.fullmatch(r"(:\d+){0,2}", place[len(str(path)) :]) is not None
    return re.fullmatch(r"\(top level\)|[A-Za-z_][\w.\[\]\\-]*", place) is not None


def assert_fails_cleanly(outcome: Outcome, case: Case) -> None:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    # The loader's last-resort containment of a compiler crash is a bug, not an answer.
    assert "a bug in the processor" not in outcome.stderr, outcome.stderr
    assert outcome.code == 1, (outcome.code, outcome.stderr)
    assert outcome.stdout == ""
    header, *problems = outcome.stderr.splitlines()
    assert header == "error: invalid configuration:"
    assert problems, "no problem named"
    for line in problems:
        assert line.startswith("  "), line
        assert not line.startswith("   "), line
        assert len(line) <= MAX_LINE, line[:200]
        place, separator, message = line[2:].partition(": ")
        assert separator, line
        assert message.strip(), line
        assert names_a_place(place, case.path), line
    for expected in case.expects:
        assert expected in outcome.stderr, f"{expected!r} not in:\n{outcome.stderr}"


def test_the_corpus_covers_the_known_attacks() -> None:
    names = {p.name for p in CORPUS_FILES} | set(GENERATED)
    assert len(names) >= 25
    for required in ("alias-bomb.yaml", "not-utf8.yaml", "nested-not-500.yaml", "empty.yaml"):
        assert required in names
    for path in CORPUS_FILES:
        assert read_case(path).expects, f"{path.name} says nothing about what it expects"


@pytest.mark.parametrize("name", [p.name for p in CORPUS_FILES] + list(GENERATED))
def test_broken_config_fails_with_one_line_per_problem(
    name: str, cases: dict[str, Case], in_process: dict[str, Outcome]
) -> None:
    assert_fails_cleanly(in_process[name], cases[name])


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_the_command_line_fails_cleanly_within_time_and_memory(
    name: str, cases: dict[str, Case], subprocesses: dict[str, Outcome]
) -> None:
    outcome = subprocesses[name]
    assert_fails_cleanly(outcome, cases[name])
    assert outcome.seconds < 30


@pytest.mark.parametrize("command", ["run", "preview"])
@pytest.mark.parametrize("name", OTHER_COMMANDS)
def test_run_and_preview_load_the_same_way(
    command: str, name: str, cases: dict[str, Case], subprocesses: dict[str, Outcome]
) -> None:
    assert_fails_cleanly(subprocesses[f"{command}:{name}"], cases[name])


@pytest.mark.parametrize("path", [EXAMPLE_CONFIG, COMPOSE_CONFIG], ids=lambda p: p.name)
def test_valid_configs_still_pass(
    path: Path, in_process: dict[str, Outcome], subprocesses: dict[str, Outcome]
) -> None:
    for outcome in (in_process[path.name], subprocesses[path.name]):
        assert outcome.code == 0, outcome.stderr
        assert "Traceback" not in outcome.stderr
        assert f"{path}: OK" in outcome.stdout


def test_the_alias_bomb_is_refused_at_its_sixth_line(
    cases: dict[str, Case], subprocesses: dict[str, Outcome]
) -> None:
    """Counted, never expanded: refused on the line where the count passes the limit."""
    case = cases["alias-bomb.yaml"]
    assert case.path.stat().st_size < 1024
    lines = case.path.read_text().splitlines()
    line_a = next(i for i, line in enumerate(lines, 1) if line.startswith("a: &a"))
    # Written out, a to e hold about 75,000 values; f's first alias (*e) passes 100,000.
    line_f = line_a + 5
    assert lines[line_f - 1].startswith("f: &f [*e,")
    expected = f"{case.path}:{line_f}: more than 100,000 values"
    assert expected in subprocesses["alias-bomb.yaml"].stderr


def test_outcomes_are_the_same_in_process_and_as_a_command(
    in_process: dict[str, Outcome], subprocesses: dict[str, Outcome]
) -> None:
    for name in SUBPROCESS_CASES:
        assert in_process[name].stderr == subprocesses[name].stderr, name
