"""Requests built to hurt the two HTTP servers (the sandbox and the metrics server), sent
byte for byte over raw sockets from the corpus in ``http/`` (its README has the format)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from processor.metrics import Metrics, MetricsServer
from processor.sandbox import Sandbox

CORPUS = Path(__file__).parent / "http"
CASES = sorted(CORPUS.glob("*.json"))
#: The sandbox's body limit for the corpus, small so over-limit bodies fit in a file.
SANDBOX_MAX_BODY = 64
#: How long a case waits for an answer: a server still reading after this is stuck.
ANSWER_TIMEOUT_S = 10

_KEYS = {"why", "server", "newline", "send", "expect", "closes"}
_SERVERS = {"sandbox", "metrics"}


@dataclass(frozen=True, slots=True)
class Case:
    why: str
    server: str
    request: bytes
    expect: tuple[int, ...]
    closes: bool


def load(path: Path) -> Case:
    doc = json.loads(path.read_text())
    assert set(doc) <= _KEYS, f"unknown keys {set(doc) - _KEYS}"
    assert {"why", "server", "send", "expect", "closes"} <= set(doc), "a required key is missing"
    assert doc["server"] in _SERVERS
    assert doc["why"].strip()
    assert doc["expect"], "expect at least one answer"
    newline = doc.get("newline", "\r\n")
    request = "".join(_line(line) + newline for line in doc["send"])
    return Case(
        why=doc["why"],
        server=doc["server"],
        request=request.encode("latin-1"),
        expect=tuple(int(status) for status in doc["expect"]),
        closes=bool(doc["closes"]),
    )


def _line(line: str | list[Any]) -> str:
    if isinstance(line, str):
        return line
    return "".join(p if isinstance(p, str) else str(p[0]) * int(p[1]) for p in line)


class Answers:
    """Reads HTTP answers (status line, headers, Content-Length body) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _more(self) -> bool:
        try:
            data = self._sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            pytest.fail(f"no answer in {ANSWER_TIMEOUT_S}s: the server waits for bytes never sent")
        self._buffer += data
        return bool(data)

    def next_status(self) -> int:
        while b"\r\n\r\n" not in self._buffer:
            if not self._more():
                pytest.fail(f"the connection closed before a whole answer: {self._buffer!r}")
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *fields = head.split(b"\r\n")
        length = 0
        for field in fields:
            name, _, value = field.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self._buffer) < length:
            if not self._more():
                pytest.fail("the connection closed in the middle of an answer's body")
        self._buffer = self._buffer[length:]
        return int(status_line.split(b" ", 2)[1])

    def closed(self) -> bool:
        return not self._buffer and not self._more()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(max_body_bytes=SANDBOX_MAX_BODY) as sb:
        yield sb


@pytest.fixture(scope="module")
def metrics_port() -> Iterator[int]:
    ok = lambda: (True, "ok")  # noqa: E731
    server = MetricsServer(
        Metrics(CollectorRegistry()).registry, "127.0.0.1", 0, liveness=ok, readiness=ok
    )
    server.start()
    try:
        yield server.port
    finally:
        server.close()


def test_the_corpus_has_cases_for_both_servers() -> None:
    assert {load(path).server for path in CASES} == _SERVERS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_a_hostile_request_gets_the_answers_its_case_expects(
    path: Path, sandbox: Sandbox, metrics_port: int
) -> None:
    case = load(path)
    port = sandbox.port if case.server == "sandbox" else metrics_port
    judged_before = sandbox.stats()["requests"]["total"]
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        sock.sendall(case.request)
        answers = Answers(sock)
        statuses = tuple(answers.next_status() for _ in case.expect)
        assert statuses == case.expect, case.why
        if case.closes:
            assert answers.closed(), f"the connection stayed open: {case.why}"
    if case.server == "sandbox" and all(status >= 400 for status in case.expect):
        assert sandbox.stats()["requests"]["total"] == judged_before, "a refusal was judged"
