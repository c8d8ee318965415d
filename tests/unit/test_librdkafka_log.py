"""librdkafka's failed-connection lines: lowered to warning and held back to one per broker
every 30 s, fed as the LogRecords confluent-kafka makes of them (``logger=`` of a client:
``"%s [%s] %s"`` with facility, client name and librdkafka's text). No broker, no network;
tests/integration/test_kafka_log_noise.py runs a real client against a closed port."""

from __future__ import annotations

import logging

import pytest

from processor.logs import (
    CONNECTION_FAILURE_INTERVAL_S,
    LIBRDKAFKA_LOGGER,
    KafkaConnectionNoise,
    librdkafka_logger,
)


def refused(port: int = 9092, client: str = "tiktok-events#consumer-1") -> logging.LogRecord:
    """What confluent-kafka logs for one refused connection (captured from librdkafka
    2.16 against a closed port)."""
    broker = f"127.0.0.1:{port}/bootstrap"
    text = (
        f"[thrd:{broker}]: {broker}: Connect to ipv4#127.0.0.1:{port} failed: "
        "Connection refused (after 0ms in state CONNECT)"
    )
    return kafka_line(logging.ERROR, "FAIL", text, client)


def kafka_line(
    level: int, facility: str, text: str, client: str = "tiktok-events#consumer-1"
) -> logging.LogRecord:
    return logging.LogRecord(
        LIBRDKAFKA_LOGGER, level, __file__, 0, "%s [%s] %s", (facility, client, text), None
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def noise(clock: Clock) -> KafkaConnectionNoise:
    return KafkaConnectionNoise(clock=clock)


def test_a_refused_connection_is_a_warning_not_an_error(noise: KafkaConnectionNoise) -> None:
    record = refused()
    assert noise.filter(record)
    assert record.levelno == logging.WARNING
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "FAIL [tiktok-events#consumer-1] [thrd:127.0.0.1:9092/bootstrap]: "
        "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: "
        "Connection refused (after 0ms in state CONNECT)"
    )


def test_repeats_are_held_back_for_30s_per_broker_and_counted_in_the_next_line(
    noise: KafkaConnectionNoise, clock: Clock
) -> None:
    assert CONNECTION_FAILURE_INTERVAL_S == 30.0
    passed: list[logging.LogRecord] = []
    # A 32 s outage, a reconnect every 62.5 ms (exact in binary): 512 lines.
    for _ in range(512):
        record = refused()
        if noise.filter(record):
            passed.append(record)
        clock.now += 0.0625
    assert [r.levelno for r in passed] == [logging.WARNING, logging.WARNING]
    assert "more failed connections" not in passed[0].getMessage()
    assert (
        passed[1]
        .getMessage()
        .endswith(
            "Connection refused (after 0ms in state CONNECT) "
            "(and 479 more failed connections to this broker since the last such line)"
        )
    )
    assert passed[1].args == ()  # the count is in the text, nothing is formatted again


def test_brokers_are_held_back_separately_whatever_the_client(
    noise: KafkaConnectionNoise, clock: Clock
) -> None:
    assert noise.filter(refused(9092))
    assert noise.filter(refused(9093))
    # The dead-letter producer and the lag probe reach the same broker: held back too.
    assert not noise.filter(refused(9092, client="tiktok-events-dlq#producer-2"))
    assert not noise.filter(refused(9093, client="tiktok-events-lag#producer-3"))
    clock.now += 30
    assert noise.filter(refused(9092))
    assert noise.filter(refused(9093))


def test_a_brokers_name_by_node_id_is_the_same_broker_as_its_bootstrap_name(
    noise: KafkaConnectionNoise,
) -> None:
    assert noise.filter(refused(9092))
    text = (
        "[thrd:127.0.0.1:9092/1]: 127.0.0.1:9092/1: Connect to ipv4#127.0.0.1:9092 failed: "
        "Connection refused (after 0ms in state CONNECT)"
    )
    assert not noise.filter(kafka_line(logging.ERROR, "FAIL", text))


@pytest.mark.parametrize(
    "text",
    [
        "[thrd:kafka-1:9092/1]: kafka-1:9092/1: Disconnected (after 12004ms in state UP)",
        "[thrd:kafka-1:9092/1]: kafka-1:9092/1: Failed to resolve 'kafka-1:9092': "
        "Name or service not known (after 2ms in state CONNECT)",
        "[thrd:kafka-1:9092/1]: kafka-1:9092/1: Receive failed: Connection reset by peer "
        "(after 5ms in state UP)",
        "[thrd:[::1]:9092/bootstrap]: [::1]:9092/bootstrap: Connect to ipv6#[::1]:9092 "
        "failed: Connection refused (after 0ms in state CONNECT)",
    ],
    ids=["disconnected", "dns", "reset", "ipv6"],
)
def test_every_kind_of_transport_failure_is_lowered_and_held_back(
    noise: KafkaConnectionNoise, text: str
) -> None:
    first, second = kafka_line(logging.ERROR, "FAIL", text), kafka_line(logging.ERROR, "FAIL", text)
    assert noise.filter(first)
    assert first.levelno == logging.WARNING
    assert not noise.filter(second)


@pytest.mark.parametrize(
    "text",
    [
        "[thrd:kafka-1:9093/1]: kafka-1:9093/1: Disconnected while requesting ApiVersion: "
        "might be caused by incorrect security.protocol configuration (connecting to a "
        "SSL listener?) or broker version is < 0.10 (after 2ms in state APIVERSION_QUERY)",
        "[thrd:sasl_ssl://kafka-1:9093/1]: sasl_ssl://kafka-1:9093/1: SSL handshake failed: "
        "error:0A000086:SSL routines::certificate verify failed (after 5ms in state "
        "SSL_HANDSHAKE)",
        "[thrd:sasl_plaintext://kafka-1:9092/1]: sasl_plaintext://kafka-1:9092/1: SASL "
        "authentication error: Authentication failed (after 4ms in state AUTH_REQ)",
        "[thrd:app]: Configuration property group.protocol.type is a consumer property",
    ],
    ids=["security-protocol-hint", "tls", "sasl", "not-a-connection"],
)
def test_lines_about_the_settings_keep_their_level_and_are_never_held_back(
    noise: KafkaConnectionNoise, text: str
) -> None:
    for _ in range(3):
        record = kafka_line(logging.ERROR, "FAIL", text)
        assert noise.filter(record)
        assert record.levelno == logging.ERROR


def test_lines_below_warning_pass_as_they_are(noise: KafkaConnectionNoise) -> None:
    # librdkafka logs a connection closed while idle at info level: left alone.
    text = (
        "[thrd:GroupCoordinator]: GroupCoordinator: 127.0.0.1:9092: Disconnected: "
        "connection reset by peer (after 4997ms in state UP)"
    )
    for _ in range(3):
        record = kafka_line(logging.INFO, "FAIL", text)
        assert noise.filter(record)
        assert record.levelno == logging.INFO


def test_a_line_that_is_not_librdkafkas_format_passes_untouched(
    noise: KafkaConnectionNoise,
) -> None:
    record = logging.LogRecord(
        LIBRDKAFKA_LOGGER, logging.ERROR, __file__, 0, "Connection refused %s", ("x",), None
    )
    assert noise.filter(record)
    assert record.levelno == logging.ERROR


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        KafkaConnectionNoise(0)


def test_the_librdkafka_logger_carries_one_filter_however_often_it_is_asked_for() -> None:
    logger = librdkafka_logger()
    assert logger is librdkafka_logger()
    assert logger.name == "processor.kafka.librdkafka"
    assert sum(isinstance(f, KafkaConnectionNoise) for f in logger.filters) == 1


def test_through_the_logger_an_outage_reaches_handlers_as_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="processor")
    logger = librdkafka_logger()
    # A broker no other test names: the process-wide filter has not seen it.
    for _ in range(50):
        record = refused(port=29_417)
        logger.handle(record)
    ours = [r for r in caplog.records if "127.0.0.1:29417" in r.getMessage()]
    assert [r.levelname for r in ours] == ["WARNING"]
