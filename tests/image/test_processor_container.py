"""The processor image run as a container against the real broker and the sandbox.

One container of the image's default command (``run --config /etc/tiktok-events/config.yaml``,
one worker, JSON logs) is set up as the Helm chart sets up its pod (tests/image/deployment.py)
and fed the sample clickstream by the image's own ``produce-sample``; the tests of the first
part look at it while it runs and after ``docker stop``, in file order. The tests after them
start containers of their own: a token rotated the way the kubelet rotates a Secret, and a stop
that must drain lingering batches of two workers.
"""

from __future__ import annotations

import errno
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.kafka import TopicFactory, unique_name
from processor.sandbox import Sandbox
from tests.image.conftest import StartContainer
from tests.image.deployment import CONFIG_DIR, TMP_DIR, Deployment
from tests.image.engine import APP_GID, APP_UID, Container, one_shot
from tests.integration.pipeline import (
    TOKEN,
    MakePipeline,
    Pipeline,
    all_committed,
    dead_letters,
    wait_for,
)

pytestmark = [pytest.mark.image, pytest.mark.kafka]

KINDS = ("page_view", "button_click", "sign_up", "form_submit")
SAMPLE_RECORDS = 3000
#: docker-compose.yml's stop_grace_period; the chart's terminationGracePeriodSeconds is 60.
GRACE_S = 45.0
ROTATED_TOKEN = "tok-image-rotated-never-log-me"


@dataclass
class Delivered:
    """The module's container after the sample was delivered, and what was expected."""

    pipeline: Pipeline
    container: Container
    expected: Counter[str]
    produced: int


def accepted_by_event(port: int) -> dict[str, int]:
    """``tiktok_events_events_sent_total{outcome="accepted"}`` by event, from /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "tiktok_events_events_sent_total"
                and sample.labels.get("outcome") == "accepted"
            ):
                counts[sample.labels["event"]] += int(sample.value)
    return {event: count for event, count in counts.items() if count}


def produce_sample(pipeline: Pipeline, count: int, seed: int) -> tuple[int, Counter[str]]:
    """The image's ``produce-sample`` onto the pipeline's topics; (records, expected events)."""
    topics = ",".join(f"{kind}={topic}" for kind, topic in pipeline.topics.items())
    done = one_shot(
        "produce-sample", "--bootstrap", pipeline.bootstrap, "--topics", topics,
        "--count", str(count), "--seed", str(seed), "--json",
        network="host", timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return int(summary["produced"]), Counter(summary["expected_events"])


@pytest.fixture(scope="module")
def delivered(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Delivered]:
    workdir = tmp_path_factory.mktemp("container")
    topics = TopicFactory(kafka_bootstrap, prefix="image")
    with Sandbox(tokens=(TOKEN,)) as sandbox:
        try:
            pipeline = Pipeline(
                bootstrap=kafka_bootstrap,
                topics={kind: topics(partitions=3) for kind in KINDS},
                dead_letter_topic=topics(partitions=1),
                group=unique_name("group-image"),
                sandbox=sandbox,
                workdir=workdir,
            )
            produced, expected = produce_sample(pipeline, SAMPLE_RECORDS, seed=5)
            container = Container("processor", Deployment.of(pipeline, workdir).docker_args())
            try:
                yield Delivered(pipeline, container, expected, produced)
            finally:
                container.remove()
        finally:
            topics.cleanup()


# --------------------------------------------------------------------------------------------
# One container, in file order: running, delivering, healthy, stopped.
# --------------------------------------------------------------------------------------------


def test_the_container_runs_as_the_fixed_non_root_user(delivered: Delivered) -> None:
    container = delivered.container
    wait_for(container.running, 30, "the container to run")
    config = container.inspect()["Config"]
    assert config["User"] == f"{APP_UID}:{APP_GID}"
    status = container.process_status(1)  # the entry point itself, tiktok-events run
    assert status["Name"] == "tiktok-events", status  # the image's entry point, as PID 1
    cmdline = container.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1:4] == ["/opt/venv/bin/tiktok-events", "run", "--config"], cmdline
    assert status["Uid"].split() == [str(APP_UID)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(APP_GID)] * 4, status["Gid"]


def test_the_container_has_a_read_only_root_and_no_capabilities(delivered: Delivered) -> None:
    container = delivered.container
    status = container.process_status(1)
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, f"{capabilities}: {status[capabilities]}"
    assert status["NoNewPrivs"] == "1"
    probe = (
        "import json, os\n"
        "result = {}\n"
        "for path in ('/', '/app', '/app/processor', '/opt/venv', '/etc', '/tmp'):\n"
        "    try:\n"
        "        with open(os.path.join(path, '.probe'), 'w'):\n"
        "            pass\n"
        "        result[path] = 0\n"
        "    except OSError as exc:\n"
        "        result[path] = exc.errno\n"
        "print(json.dumps(result))\n"
    )
    done = container.exec("python", "-c", probe)
    assert done.returncode == 0, done.stderr
    writes = json.loads(done.stdout)
    # Only the tmpfs the deployments give it (/tmp) takes a file; the root is read-only, not
    # merely not writable by this user.
    assert writes.pop(TMP_DIR) == 0
    assert writes == dict.fromkeys(writes, errno.EROFS)
    host_config = container.inspect()["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]


def test_every_expected_event_of_the_sample_clickstream_is_accepted(delivered: Delivered) -> None:
    pipeline, container = delivered.pipeline, delivered.container
    assert delivered.produced == SAMPLE_RECORDS
    assert set(delivered.expected) == {"ViewContent", "ClickButton", "CompleteRegistration", "Lead"}
    try:
        pipeline.wait_delivered(delivered.expected, timeout=120)
        wait_for(lambda: all_committed(pipeline), 60, "every offset committed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{container.describe()}") from None
    assert pipeline.accepted() == delivered.expected
    assert pipeline.sandbox.stats()["events"]["duplicates"] == 0  # each sent exactly once
    assert dead_letters(pipeline) == []
    assert pipeline.metric("tiktok_events_records_consumed_total") == SAMPLE_RECORDS


def test_metrics_healthz_and_readyz_answer_on_the_container_port(delivered: Delivered) -> None:
    port = delivered.pipeline.metrics_port
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert accepted_by_event(port) == dict(delivered.expected)
    for path in ("/healthz", "/readyz"):
        reply = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert (reply.status_code, reply.text.strip()) == (200, "ok"), path


def test_the_docker_healthcheck_turns_healthy(delivered: Delivered) -> None:
    container = delivered.container
    # The HEALTHCHECK's first probe runs one interval (15 s) after the start.
    wait_for(lambda: container.health() == "healthy", 60, "Docker to report healthy", every=1)
    probes = container.state()["Health"]["Log"]
    assert probes, "no probe ran"
    assert probes[-1]["ExitCode"] == 0
    assert container.state()["Health"]["FailingStreak"] == 0


def test_docker_stop_exits_0_well_within_the_grace_period(delivered: Delivered) -> None:
    code, took = delivered.container.stop(GRACE_S)
    assert code == 0, delivered.container.describe()
    assert took < GRACE_S / 2, f"docker stop took {took:.1f}s: SIGTERM did not stop it"
    state = delivered.container.state()
    assert state["OOMKilled"] is False
    assert delivered.container.inspect()["RestartCount"] == 0


def test_docker_logs_hold_json_lines_only_and_never_the_token(delivered: Delivered) -> None:
    lines = delivered.container.log_lines()
    assert lines, "the container logged nothing"
    for line in lines:
        record = json.loads(line)  # raises on any line that is not JSON
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), line
    text = "\n".join(lines)
    assert TOKEN not in text


# --------------------------------------------------------------------------------------------
# Containers of their own
# --------------------------------------------------------------------------------------------


def test_rotating_the_mounted_token_file_resumes_a_halted_delivery(
    make_pipeline: MakePipeline, containers: StartContainer, sandbox: Sandbox, tmp_path: Path
) -> None:
    pipeline = make_pipeline(partitions=1)
    deployment = Deployment.of(pipeline, tmp_path)
    _, first = pipeline.sample(200, seed=21)
    container = containers("rotation", deployment.docker_args())
    pipeline.wait_delivered(first, timeout=90)
    wait_for(lambda: all_committed(pipeline), 30, "the first part committed")
    before = {kind: pipeline.committed(kind) for kind in pipeline.topics}

    sandbox.set_tokens([ROTATED_TOKEN])  # the mounted token stops working: 40105
    _, second = pipeline.sample(200, seed=22)
    wait_for(lambda: pipeline.health("/readyz") == 503, 30, "readiness to fail")
    assert (pipeline.health_reason("/readyz") or "").startswith("halted: 40105")
    assert pipeline.health("/healthz") == 200  # halted is not dead: nothing restarts it
    assert pipeline.metric("tiktok_events_sink_fatal") == 1
    assert {kind: pipeline.committed(kind) for kind in pipeline.topics} == before
    assert pipeline.accepted() == first
    assert dead_letters(pipeline) == []  # a bad token never dead-letters

    deployment.secret.write(ROTATED_TOKEN)  # the kubelet's update of the mounted Secret
    pipeline.wait_delivered(first + second, timeout=90)
    wait_for(lambda: all_committed(pipeline), 30, "everything committed")
    wait_for(lambda: pipeline.health("/readyz") == 200, 30, "readiness to come back")
    assert pipeline.metric("tiktok_events_sink_fatal") == 0
    assert container.running()
    assert container.inspect()["RestartCount"] == 0
    code, _ = container.stop(GRACE_S)
    assert code == 0, container.describe()
    logs = container.logs()
    assert TOKEN not in logs
    assert ROTATED_TOKEN not in logs


def test_docker_stop_drains_lingering_batches_of_two_workers_and_commits(
    make_pipeline: MakePipeline, containers: StartContainer, tmp_path: Path
) -> None:
    # Commits only at the end (an interval far longer than the test) and batches that linger:
    # what is delivered and committed after the stop, the drain did.
    pipeline = make_pipeline(delivery={"commit_interval_ms": 600_000, "linger_ms": 3000})
    deployment = Deployment.of(pipeline, tmp_path)
    _, expected = pipeline.sample(800, seed=41)
    container = containers(
        "drain",
        deployment.docker_args(),
        ["run", "--config", f"{CONFIG_DIR}/config.yaml", "--workers", "2"],
    )
    wait_for(
        lambda: pipeline.metric("tiktok_events_records_consumed_total") == 800,
        90,
        "all 800 records consumed",
    )
    assert not all_committed(pipeline)  # nothing committed yet: that is the drain's to do
    code, took = container.stop(GRACE_S)
    assert code == 0, container.describe()
    assert took < GRACE_S
    assert pipeline.accepted() == expected
    assert all_committed(pipeline)
    assert dead_letters(pipeline) == []
