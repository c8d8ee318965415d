"""docker-compose.yml's sandbox, processor and producer, run by compose from the built image.

The services are docker-compose.yml's own, changed only where this machine differs (see
tests/image/compose.py), and started the way a developer starts the stack: ``up`` of the
producer, whose start conditions bring up kafka-init (completed), the sandbox (healthy) and the
processor (healthy) first. The broker is a local KRaft broker on 127.0.0.1:9092, where the
services' ``kafka:9092`` leads.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from devkit.image import COMPOSE_ENV, COMPOSE_SKIP_ENV
from devkit.kafka import KafkaCluster
from tests.conftest import ROOT
from tests.image.compose import (
    BROKER_PORT,
    METRICS_PORT,
    PRODUCER_COUNT,
    SANDBOX_PORT,
    init_topics,
    local_stack,
)
from tests.image.engine import docker
from tests.integration.pipeline import wait_for

pytestmark = [pytest.mark.image, pytest.mark.kafka]

COMPOSE_FILE = ROOT / "docker-compose.yml"
DEV_TOKEN = (ROOT / "deploy" / "compose" / "sandbox-token.txt").read_text().strip()


def _compose_command() -> list[str]:
    configured = os.environ.get(COMPOSE_ENV)
    if not configured:
        pytest.skip(
            os.environ.get(COMPOSE_SKIP_ENV)
            or "no compose command was found (make image-test looks for one)"
        )
    command: list[str] = json.loads(configured)
    return command


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of an earlier run waiting out TIME_WAIT are no bar.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - the services bind all addresses
        except OSError:
            return False
    return True


@dataclass
class Stack:
    """A compose project of docker-compose.yml's services, as changed for this machine."""

    command: list[str]
    file: Path
    project: str

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, "--project-name", self.project, "--project-directory", str(ROOT),
             "--file", str(self.file), *args],
            cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def container(self, service: str) -> str:
        done = self.compose("ps", "--quiet", service, timeout=60)
        ids = done.stdout.split()
        assert done.returncode == 0, done.stderr
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict[str, object]:
        done = docker("inspect", self.container(service))
        assert done.returncode == 0, done.stderr
        doc: list[dict[str, object]] = json.loads(done.stdout)
        return doc[0]

    def state(self, service: str) -> dict[str, object]:
        state = self.inspect(service)["State"]
        assert isinstance(state, dict)
        return state

    def logs(self, service: str) -> str:
        done = docker("logs", self.container(service))
        return done.stdout + done.stderr

    def describe(self) -> str:
        done = self.compose("logs", "--no-color", "--tail", "30", timeout=60)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def compose_doc() -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


@pytest.fixture(scope="module")
def stack(
    compose_doc: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    command = _compose_command()
    busy = [p for p in (BROKER_PORT, SANDBOX_PORT, METRICS_PORT) if not _port_free(p)]
    if busy:
        pytest.skip(f"ports {busy} are taken here; the compose services need them free")
    workdir = tmp_path_factory.mktemp("compose")
    file = workdir / "docker-compose.local.yml"
    file.write_text(yaml.safe_dump(local_stack(dict(compose_doc), ROOT), sort_keys=False))
    project = str(compose_doc["name"])
    with KafkaCluster(workdir / "kafka", nodes=1, broker_ports=[BROKER_PORT]):
        stack = Stack(command, file, project)
        try:
            up = stack.compose("up", "--detach", "producer", timeout=600)
            assert up.returncode == 0, f"compose up failed:\n{up.stdout}{up.stderr}"
            yield stack
        finally:
            stack.compose("down", "--volumes", "--remove-orphans", timeout=300)


def test_compose_reads_the_whole_file_except_what_compose_py_changes(
    compose_doc: dict[str, object], tmp_path: Path
) -> None:
    """``config`` of the whole docker-compose.yml, all seven services: the file is valid to
    this compose but for the two keys tests/image/compose.py works around, which it names."""
    command = _compose_command()

    def config(doc: dict[str, object]) -> subprocess.CompletedProcess[str]:
        file = tmp_path / "docker-compose.yml"
        file.write_text(yaml.safe_dump(doc, sort_keys=False))
        return subprocess.run(
            [*command, "--project-directory", str(ROOT), "--file", str(file), "config"],
            cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    as_written = config(compose_doc)
    nameless = config({k: v for k, v in compose_doc.items() if k != "name"})
    if command == ["docker-compose"]:  # Debian's 1.29: compose.py's changes 1 and 2
        assert as_written.returncode != 0
        assert "'name' does not match any of the regexes" in as_written.stdout + as_written.stderr
        assert nameless.returncode == 0, nameless.stderr
        assert "use the 'configs' key, which will be ignored" in nameless.stderr
    else:
        assert as_written.returncode == 0, as_written.stderr
    resolved = yaml.safe_load(nameless.stdout)
    services = compose_doc["services"]
    assert isinstance(services, dict)
    assert set(resolved["services"]) == set(services)


def _expected_events(producer_log: str) -> Counter[str]:
    """The producer's own account: ``expected TikTok events: ClickButton 120, Lead 40, …``."""
    found = re.search(r"(?m)^expected TikTok events: (.+)$", producer_log)
    assert found, producer_log
    pairs = (item.rsplit(" ", 1) for item in found.group(1).split(", "))
    return Counter({event: int(count) for event, count in pairs})


def _started(state: dict[str, object], key: str = "StartedAt") -> datetime:
    # Docker writes nanoseconds; Python reads microseconds.
    text = re.sub(r"(\.\d{6})\d*", r"\1", str(state[key]))
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_compose_brings_up_the_stack_in_its_start_order(stack: Stack) -> None:
    """kafka-init completes, then the sandbox is healthy, then the processor is, then the
    producer starts: each waits for the one before, as its depends_on condition says."""
    init = stack.state("kafka-init")
    assert (init["Status"], init["ExitCode"]) == ("exited", 0), stack.describe()
    topics = set(stack.logs("kafka-init").split())
    wanted, partitions = init_topics(
        yaml.safe_load(COMPOSE_FILE.read_text())["services"]["kafka-init"]
    )
    assert set(wanted) <= topics
    assert partitions == 6
    for service in ("sandbox", "processor"):
        state = stack.state(service)
        health = state["Health"]
        assert isinstance(health, dict)
        assert (state["Status"], health["Status"]) == ("running", "healthy"), stack.describe()
    sandbox, processor = stack.state("sandbox"), stack.state("processor")
    producer = stack.state("producer")
    assert _started(processor) >= _started(init, "FinishedAt")
    # A container is first probed one health-check interval after it starts (5 s for the
    # sandbox, 10 s for the processor), so healthy-before-the-next is at least that much later.
    assert (_started(processor) - _started(sandbox)).total_seconds() >= 4.5
    assert (_started(producer) - _started(processor)).total_seconds() >= 9


def test_the_producer_delivers_its_sample_through_the_processor_to_the_sandbox(
    stack: Stack,
) -> None:
    producer = stack.container("producer")
    waited = docker("wait", producer, timeout=180)
    assert waited.stdout.strip() == "0", stack.describe()
    log = stack.logs("producer")
    assert f"produced {PRODUCER_COUNT} records" in log, log
    expected = _expected_events(log)
    assert set(expected) == {"ViewContent", "ClickButton", "CompleteRegistration", "Lead"}

    def accepted() -> Counter[str]:
        reply = httpx.get(f"http://127.0.0.1:{SANDBOX_PORT}/sandbox/stats", timeout=5)
        return Counter(reply.json()["events"]["by_event"])

    try:
        wait_for(lambda: accepted() == expected, 120, f"the sandbox to accept {dict(expected)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; accepted {dict(accepted())}\n{stack.describe()}") from None


def test_the_processor_serves_metrics_and_health_on_its_compose_port(stack: Stack) -> None:
    base = f"http://127.0.0.1:{METRICS_PORT}"
    metrics = httpx.get(f"{base}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert "tiktok_events_records_consumed_total" in metrics.text
    # Two workers (the compose command's --workers 2), both members of the group.
    assigned = re.search(r"(?m)^tiktok_events_assigned_partitions (\S+)$", metrics.text)
    assert assigned, metrics.text[:3000]
    assert float(assigned.group(1)) == 6 * 4  # every partition of the four topics
    healthz = httpx.get(f"{base}/healthz", timeout=5)
    assert (healthz.status_code, healthz.text.strip()) == (200, "ok")
    readyz = httpx.get(f"{base}/readyz", timeout=5)
    assert (readyz.status_code, readyz.text.strip()) == (200, "ok: 2 of 2 workers have partitions")


def test_compose_stop_drains_the_processor_and_it_exits_0(stack: Stack) -> None:
    stopped = stack.compose("stop", "processor", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    state = stack.state("processor")
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), stack.describe()
    assert stack.inspect("processor")["RestartCount"] == 0
    for service in ("processor", "sandbox", "producer"):
        assert DEV_TOKEN not in stack.logs(service)
