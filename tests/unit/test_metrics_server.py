"""The ``/metrics`` server under hostile load, over real sockets on 127.0.0.1: parallel
scrapes, half-sent and trickled requests, floods of idle connections, busy workers."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from processor.httpserver import GuardedHTTPServer, ReceivedRequestHandler
from processor.metrics import Health, Metrics, MetricsServer

pytestmark = pytest.mark.timeout(60)

OK: Health = lambda: (True, "ok")  # noqa: E731


@contextlib.contextmanager
def serving(liveness: Health = OK, **settings: float) -> Iterator[tuple[MetricsServer, Metrics]]:
    metrics = Metrics(CollectorRegistry())
    server = MetricsServer(
        metrics.registry,
        "127.0.0.1",
        0,
        liveness=liveness,
        readiness=OK,
        **settings,
    )
    server.start()
    try:
        yield server, metrics
    finally:
        server.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def closed_by_server(sock: socket.socket) -> bool:
    """Block until the server closes ``sock`` (True) or sends something (False)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_hundred_parallel_scrapes_all_succeed() -> None:
    with serving() as (server, metrics):
        metrics.records_consumed.labels("web.pageviews").inc()
        start = threading.Barrier(100)

        def scrape(_: int) -> tuple[int, bytes]:
            start.wait()
            return get(server.port, "/metrics")

        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(scrape, range(100)))
    assert [status for status, _ in answers] == [200] * 100
    assert all(b"tiktok_events_records_consumed_total" in body for _, body in answers)


def test_a_half_sent_request_line_is_closed_after_the_timeout() -> None:
    with serving(timeout_s=0.5) as (server, _), connect(server.port) as sock:
        sock.sendall(b"GET /metr")
        assert closed_by_server(sock)
        assert get(server.port, "/healthz") == (200, b"ok\n")


def test_a_request_trickled_in_faster_than_the_timeout_is_still_cut_off() -> None:
    # Each byte arrives well within the timeout; a per-read timeout would never fire.
    with serving(timeout_s=0.5) as (server, _), connect(server.port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
        for _ in range(400):  # 20 s of trickling, 40 times the timeout
            readable, _w, _x = select.select([sock], [], [], 0.05)
            if readable:
                break
            try:
                sock.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert closed_by_server(sock)


def test_idle_connections_cost_no_threads_and_probes_are_still_answered() -> None:
    before = threading.active_count()
    with (
        serving(max_threads=4) as (server, _),
        contextlib.ExitStack() as idle,
    ):
        for _ in range(300):
            idle.enter_context(connect(server.port))
        # Accepted in order, so once this is answered all 300 have been accepted.
        assert get(server.port, "/healthz") == (200, b"ok\n")
        assert get(server.port, "/metrics")[0] == 200
        # The loop thread plus at most max_threads workers (the old server: one a connection).
        assert threading.active_count() <= before + 1 + 4


def test_at_the_connection_cap_the_oldest_unfinished_connection_makes_room() -> None:
    with serving(max_connections=3) as (server, _), contextlib.ExitStack() as stack:
        first, second, third = (stack.enter_context(connect(server.port)) for _ in range(3))
        first.sendall(b"GET /healthz HTTP/1.0\r\n")  # never finished
        second.sendall(b"GET /he")
        assert get(server.port, "/healthz") == (200, b"ok\n")
        assert closed_by_server(first)
        third.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # still open: it is answered
        assert third.recv(65536).startswith(b"HTTP/1.0 200 ")


def test_when_every_connection_holds_a_request_a_new_one_gets_503() -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def slow_liveness() -> tuple[bool, str]:
        entered.release()
        release.wait(30)
        return True, "ok"

    with serving(slow_liveness, max_threads=2, max_connections=2) as (server, _):
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(get, server.port, "/healthz") for _ in range(2)]
            for _ in range(2):
                assert entered.acquire(timeout=30)
            try:
                with connect(server.port) as sock:
                    answer = sock.recv(65536)
            finally:
                release.set()
            assert [f.result() for f in held] == [(200, b"ok\n")] * 2
        assert answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
        assert get(server.port, "/healthz") == (200, b"ok\n")


def test_a_head_over_the_limit_gets_431_and_the_client_reads_it() -> None:
    class Handler(ReceivedRequestHandler):
        def do_GET(self) -> None:
            self.send_error(500, "should not be reached")

        def log_message(self, format: str, *args: object) -> None:
            return

    server = GuardedHTTPServer(("127.0.0.1", 0), Handler, max_head_bytes=1024)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with connect(server.server_address[1]) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.mark.parametrize(
    "setting", ["timeout_s", "max_threads", "max_connections", "max_head_bytes"]
)
def test_settings_must_be_positive(setting: str) -> None:
    with pytest.raises(ValueError, match=f"{setting} must be positive, not 0"):
        GuardedHTTPServer(("127.0.0.1", 0), ReceivedRequestHandler, **{setting: 0})


def test_close_ends_open_connections_and_releases_the_port_and_threads() -> None:
    before = threading.active_count()
    with contextlib.ExitStack() as clients:
        with serving() as (server, _):
            half_sent = [clients.enter_context(connect(server.port)) for _ in range(5)]
            for sock in half_sent:
                sock.sendall(b"GET /")
            assert get(server.port, "/metrics")[0] == 200
            port = server.port
        assert all(closed_by_server(sock) for sock in half_sent)
    assert threading.active_count() == before
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_close_before_start_does_not_block() -> None:
    server = MetricsServer(Metrics().registry, "127.0.0.1", 0, liveness=OK, readiness=OK)
    server.close()
    server.close()
