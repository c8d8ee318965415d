"""Kafka security settings passed through to librdkafka, against a real broker whose client
listener requires SASL/SCRAM (the ``kafka_sasl`` fixture): who gets in, and the processor end
to end with its credentials given only through ``KAFKA_SETTING_*`` environment variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from devkit.kafka import (
    SCRAM_MECHANISMS,
    KafkaCluster,
    ScramUser,
    TopicFactory,
    committed_offsets,
    consume_all,
    produce,
    unique_name,
)
from processor.dlq import header_map
from processor.kafka.producer import produce_sample
from processor.sample import generate
from processor.sandbox import Sandbox
from tests.conftest import EXAMPLE_CONFIG, ROOT
from tests.integration.pipeline import Pipeline, ProcessorProcess, wait_for


@pytest.fixture
def sasl_topics(kafka_sasl: KafkaCluster, request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """Like ``new_topic``, on the SASL broker."""
    factory = TopicFactory(
        kafka_sasl.bootstrap_servers,
        prefix=request.node.name,
        client_config=kafka_sasl.client_config,
    )
    yield factory
    factory.cleanup()


def _user(kafka_sasl: KafkaCluster) -> ScramUser:
    assert kafka_sasl.sasl is not None
    return kafka_sasl.sasl


def _environment(user: ScramUser, mechanism: str = "SCRAM-SHA-256") -> dict[str, str]:
    return {
        "KAFKA_SETTING_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SETTING_SASL_MECHANISM": mechanism,
        "KAFKA_SETTING_SASL_USERNAME": user.name,
        "KAFKA_SETTING_SASL_PASSWORD": user.password,
    }


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", SCRAM_MECHANISMS)
def test_client_with_the_right_credentials_produces_and_consumes(
    kafka_sasl: KafkaCluster, sasl_topics: TopicFactory, mechanism: str
) -> None:
    settings = {**kafka_sasl.client_config, "sasl.mechanism": mechanism}
    topic = sasl_topics(partitions=1)
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(5)]
    produce(kafka_sasl.bootstrap_servers, topic, records, config=settings, timeout=15)
    read = consume_all(kafka_sasl.bootstrap_servers, topic, config=settings, timeout=15)
    assert [(r.key, r.value) for r in read] == records


@pytest.mark.kafka
def test_client_with_a_wrong_password_fails_to_authenticate(
    kafka_sasl: KafkaCluster, sasl_topics: TopicFactory
) -> None:
    topic = sasl_topics(partitions=1)
    errors: list[KafkaError] = []
    delivered: list[KafkaError | None] = []
    producer = Producer(
        {
            "bootstrap.servers": kafka_sasl.bootstrap_servers,
            **_user(kafka_sasl).client_config(password="not-the-password"),
            "message.timeout.ms": 3000,
            "error_cb": errors.append,
        }
    )
    producer.produce(topic, b"never stored", on_delivery=lambda e, _m: delivered.append(e))
    deadline = time.monotonic() + 10
    while not delivered and time.monotonic() < deadline:
        producer.poll(0.2)
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    assert auth, f"no authentication error within 10 s; errors: {errors}"
    assert "invalid credentials" in auth[0].str()
    assert len(delivered) == 1
    assert delivered[0] is not None  # the record timed out unsent
    assert delivered[0].code() == KafkaError._MSG_TIMED_OUT
    stored = consume_all(
        kafka_sasl.bootstrap_servers, topic, config=kafka_sasl.client_config, timeout=15
    )
    assert stored == []


@pytest.mark.kafka
def test_client_without_credentials_gets_nothing(kafka_sasl: KafkaCluster) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_sasl.bootstrap_servers})
    with pytest.raises(KafkaException) as raised:
        admin.list_topics(timeout=3)
    assert raised.value.args[0].code() == KafkaError._TRANSPORT


@pytest.mark.kafka
def test_processor_runs_with_credentials_only_from_the_environment(
    kafka_sasl: KafkaCluster, sasl_topics: TopicFactory, sandbox: Sandbox, tmp_path: Path
) -> None:
    bootstrap, settings, user = (
        kafka_sasl.bootstrap_servers,
        kafka_sasl.client_config,
        _user(kafka_sasl),
    )
    pipeline = Pipeline(
        bootstrap=bootstrap,
        topics={
            kind: sasl_topics(partitions=2)
            for kind in ("page_view", "button_click", "sign_up", "form_submit")
        },
        dead_letter_topic=sasl_topics(partitions=1),
        group=unique_name("group-sasl"),
        sandbox=sandbox,
        workdir=tmp_path,
    )
    # The environment is the only source of the security settings.
    assert not yaml.safe_load(pipeline.config_path.read_text())["kafka"].get("settings")
    records, expected = generate(200, seed=7, start=time.time() - 60, topics=pipeline.topics)
    produce_sample(bootstrap, records, settings=settings)
    produce(bootstrap, pipeline.topics["page_view"], [(b"bad", b"\x00not json")], config=settings)

    processor = ProcessorProcess(
        pipeline.config_path, tmp_path / "processor.log", env=_environment(user)
    )
    try:
        pipeline.wait_delivered(expected, timeout=30)
        wait_for(
            lambda: len(consume_all(bootstrap, pipeline.dead_letter_topic, config=settings)) == 1,
            20,
            "one dead letter",
        )
        wait_for(lambda: _all_committed(pipeline, settings), 20, "every offset committed")
        metrics = httpx.get(f"http://127.0.0.1:{pipeline.metrics_port}/metrics", timeout=5).text
        processor.terminate()
        assert processor.wait(30) == 0, processor.log()
    finally:
        processor.close()

    (letter,) = consume_all(bootstrap, pipeline.dead_letter_topic, config=settings)
    assert letter.value == b"\x00not json"
    headers = header_map(letter.headers)
    assert headers["dlq.stage"] == "decode"
    assert headers["dlq.source.topic"] == pipeline.topics["page_view"]
    assert pipeline.sandbox.stats()["events"]["duplicates"] == 0
    assert "tiktok_events_records_consumed_total" in metrics
    log = (tmp_path / "processor.log").read_text(errors="replace")
    assert log.strip(), "the processor logged nothing"
    assert user.password not in log
    assert user.password not in metrics


@pytest.mark.parametrize(
    ("name", "password", "mechanism"),
    [
        ("alice", "", "SCRAM-SHA-256"),
        ("alice", 'pass"word', "SCRAM-SHA-256"),
        ("al ice", "secret", "SCRAM-SHA-256"),
        ("alice", "a,b=c", "SCRAM-SHA-256"),
        ("alice", "secret", "PLAIN"),
    ],
)
def test_scram_user_refuses_what_the_broker_configuration_cannot_hold(
    name: str, password: str, mechanism: str
) -> None:
    with pytest.raises(ValueError, match="SCRAM"):
        ScramUser(name, password, mechanism)


def test_scram_user_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(ScramUser("alice", "s3cret"))


def test_check_config_names_a_bad_sasl_mechanism() -> None:
    # Offline: check-config connects to nothing, so no broker is needed.
    user = ScramUser("alice", unique_name("alice-secret"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TIKTOK_"))}
    env.update(_environment(user, mechanism="BOGUS"), TIKTOK_ACCESS_TOKEN="tok-check-config")
    result = subprocess.run(
        [sys.executable, "-m", "processor", "check-config", str(EXAMPLE_CONFIG)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line.strip() for line in result.stderr.splitlines() if "sasl.mechanism" in line]
    assert len(problems) == 1, result.stderr
    assert problems[0].startswith("kafka.settings.sasl.mechanism:"), result.stderr
    assert user.password not in result.stdout + result.stderr


def _all_committed(pipeline: Pipeline, settings: dict[str, str]) -> bool:
    """Whether the group has committed every topic up to its end (read with `settings`)."""
    for topic in pipeline.topics.values():
        ends: dict[int, int] = {}
        for record in consume_all(pipeline.bootstrap, topic, config=settings):
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        committed = committed_offsets(pipeline.bootstrap, pipeline.group, topic, config=settings)
        if any(committed.get(partition, 0) < end for partition, end in ends.items()):
            return False
    return True
