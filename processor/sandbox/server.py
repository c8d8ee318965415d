"""The sandbox's HTTP server and its Python handle, :class:`Sandbox`.

Owns the wire: a stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive (one
thread per connection), the routes, and the start/stop life of the server thread.
Everything the routes decide is delegated to :class:`~processor.sandbox.state.SandboxState`.

Routes::

    POST /open_api/v1.3/event/track/    TikTok's endpoint (Access-Token header, JSON body)
    GET  /                              the Test Events page (processor/sandbox/page.py)
    GET  /sandbox/feed?cursor=&limit=&pixel=&event=&test_event_code=&scope=
                                        what the page polls: the newest events, newest first
    GET  /healthz                       {"status": "ok"}
    GET  /sandbox/stats                 every counter
    GET  /sandbox/events?event=&pixel=&event_id=&test_event_code=&scope=all|live|test&limit=
    POST /sandbox/reset                 forget events and counters (tokens and faults stay)
    GET  /sandbox/faults                the fault configuration and its progress
    POST /sandbox/faults                replace it: {"spec": "..."} or the JSON form
    GET  /sandbox/tokens                token labels (never the tokens)
    POST /sandbox/tokens                replace (or "merge") the accepted tokens:
                                        {"tokens": ["t1", {"token": "t0", "expired": true}]}

Responses are written in one ``send`` (headers and body together) with Nagle off, so
keep-alive clients never wait on a delayed ACK.

Bodies are framed strictly (RFC 9112): a Content-Length of ASCII digits, or ``chunked`` as
the only transfer coding, never both; every chunk size is checked against the body limit
before a byte of it is read. A body that cannot be framed is refused and the connection
closed, as the rest of its bytes cannot be told from the next request. Keep-alive holds a
thread a connection, so connections are bounded (``max_connections``): past the bound a new
one is answered 503 at once, without a thread.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

import orjson

from processor.errors import ConfigError
from processor.sandbox import page
from processor.sandbox.faults import FaultConfig
from processor.sandbox.protocol import TRACK_PATH, reason_phrase
from processor.sandbox.state import Reply, SandboxState, TrackRequest
from processor.sandbox.tokens import DEFAULT_TOKEN, TokenLike, parse_tokens

log = logging.getLogger("processor.sandbox")

#: Largest request body accepted (1000 events of a few kB each fit easily); bigger → 413.
MAX_BODY_BYTES = 32 * 1024 * 1024

#: Most events ``/sandbox/events`` returns at once.
MAX_EVENTS_LIMIT = 100_000

#: Most connections open at once (each holds a thread while it is kept alive); more → 503.
MAX_CONNECTIONS = 1024

#: The longest chunk-size line (size, extensions, line end) read; longer → 400.
_MAX_CHUNK_LINE = 1024
#: Bytes of trailer fields read after the last chunk (all dropped); more → 400.
_MAX_TRAILER_BYTES = 16 * 1024
#: A chunk size: hex digits only (``int(x, 16)`` alone would also take ``-1``, ``0x10``,
#: ``1_0`` and spaces); 16 of them already exceed any body limit.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: The line end after a chunk's data.
_LINE_ENDS = (b"\r\n", b"\n")
#: Digits of a Content-Length beyond which it is over any body limit (and beyond which
#: ``int`` refuses to convert it).
_MAX_LENGTH_DIGITS = 18

_BUSY_BODY = b'{"error": "too many connections"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)

_SCOPES = frozenset({"all", "live", "test"})


class _Unreadable(Exception):
    """A request body that cannot be read: answered with ``status`` and ``error``."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # many benchmark clients connect at once

    def __init__(
        self,
        address: tuple[str, int],
        state: SandboxState,
        *,
        max_body_bytes: int,
        idle_timeout_s: float,
        max_connections: int,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query we neither need nor
        # may be able to make.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs on the accepting thread: refusing here costs no thread, and a fresh socket's
        # send buffer takes the short 503 whole, so the accepting never blocks.
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY)
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="sandbox-connection",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        try:
            thread.start()
        except RuntimeError:  # no more threads to be had: as good as busy
            self._slots.release()
            self.shutdown_request(request)

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away mid-answer is routine (timeouts, benchmark shutdown).
        log.debug("sandbox: connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """End every open keep-alive connection and wait for its thread."""
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tiktok-events-sandbox"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        # An idle keep-alive connection ends (its thread with it) after this long.
        self.connection.settimeout(self.server.idle_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines and parse errors only: headers (the token) are never logged.
        log.debug("sandbox: %s %s", self.address_string(), format % args)

    # -- routing ----------------------------------------------------------------------

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = self.path.partition("?")[0]
        if path == TRACK_PATH:
            token = self.headers.get("Access-Token")
            request = TrackRequest(
                token=None if token is None else token.encode("latin-1", "replace"),
                body=body,
                content_type=self.headers.get("Content-Type"),
                content_encoding=self.headers.get("Content-Encoding"),
            )
            self._send(self.server.state.track(request))
        elif path in _POST_ROUTES:
            self._control(_POST_ROUTES[path], body)
        else:
            self._send_json(404, {"error": f"no such endpoint: POST {path}"})

    def do_GET(self) -> None:
        # A body nobody wants is still read, or on a kept-alive connection it would be
        # parsed as the next request.
        if self._read_body() is None:
            return
        path, _, query = self.path.partition("?")
        if path == page.PAGE_PATH:
            self._send(page.page_reply())
        elif path in _GET_ROUTES:
            try:
                self._send_json(200, _GET_ROUTES[path](self.server.state, parse_qs(query)))
            except ValueError as exc:
                self._send_json(400, {"error": str(exc)})
        elif path == TRACK_PATH:
            self._send_json(405, {"error": "use POST"}, headers=(("Allow", "POST"),))
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {path}"})

    def _control(self, route: Callable[[SandboxState, Any], Any], body: bytes) -> None:
        try:
            doc = orjson.loads(body) if body.strip() else {}
            self._send_json(200, route(self.server.state, doc))
        except orjson.JSONDecodeError:
            self._send_json(400, {"error": "the body is not valid JSON"})
        except ConfigError as exc:
            self._send_json(400, {"error": str(exc), "problems": list(exc.problems)})
        except (ValueError, TypeError) as exc:
            self._send_json(400, {"error": str(exc)})

    # -- reading and writing ----------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read."""
        try:
            return self._framed_body()
        except _Unreadable as exc:
            self._refuse(exc.status, exc.error)
            return None

    def _framed_body(self) -> bytes:
        codings = self.headers.get_all("Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length")
        if codings is not None:
            # Both framings at once is how requests are smuggled past proxies (RFC 9112 §6.3).
            if lengths is not None:
                raise _Unreadable(400, "both Transfer-Encoding and Content-Length")
            if [c.strip().lower() for c in codings] != ["chunked"]:
                raise _Unreadable(501, "only the chunked transfer coding is supported")
            return self._read_chunked()
        if lengths is None:
            return b""
        text = lengths[0].strip()
        # ASCII digits only: int() also takes "+5", "-0", "5_0" and other scripts' digits.
        if not (text.isascii() and text.isdigit()) or any(v.strip() != text for v in lengths):
            raise _Unreadable(400, "invalid Content-Length")
        digits = text.lstrip("0") or "0"
        if len(digits) > _MAX_LENGTH_DIGITS or int(digits) > self.server.max_body_bytes:
            raise self._too_large()
        size = int(digits)
        body = self.rfile.read(size)
        if len(body) < size:
            raise _Unreadable(400, "the body ended before its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        """A chunked body (RFC 9112 §7.1). Each chunk's size is checked against the limit
        before any of its bytes are read."""
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE)
            size_text = line.split(b";", 1)[0].rstrip(b" \t\r\n")  # extensions are dropped
            if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size_text):
                raise _Unreadable(400, "invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                self._skip_trailers()
                return b"".join(chunks)
            total += size
            if total > self.server.max_body_bytes:
                raise self._too_large()
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.readline(3) not in _LINE_ENDS:
                raise _Unreadable(400, "a chunk is not the size it says")
            chunks.append(chunk)

    def _skip_trailers(self) -> None:
        """Read the trailer fields after the last chunk, up to the empty line."""
        budget = _MAX_TRAILER_BYTES
        while (line := self.rfile.readline(budget + 1)) not in _LINE_ENDS:
            budget -= len(line)
            if budget < 0 or not line.endswith(b"\n"):
                raise _Unreadable(400, "invalid chunked body trailer")

    def _too_large(self) -> _Unreadable:
        return _Unreadable(413, f"body larger than {self.server.max_body_bytes} bytes")

    def _refuse(self, status: int, error: str) -> None:
        """Answer an unreadable request and close: the rest of its bytes can't be framed."""
        self.close_connection = True
        self._send_json(status, {"error": error})

    def _send_json(
        self, status: int, doc: Any, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._send(Reply(status=status, body=orjson.dumps(doc), headers=headers))

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            # Close without a byte of answer: the client sees the connection die.
            self.close_connection = True
            return
        lines = [
            f"HTTP/1.1 {reply.status} {reason_phrase(reply.status)}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + reply.body)


# -- control routes -----------------------------------------------------------------


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _get_events(state: SandboxState, query: Mapping[str, list[str]]) -> dict[str, Any]:
    scope = _one(query, "scope") or "all"
    limit_text = _one(query, "limit") or "1000"
    if scope not in _SCOPES or not limit_text.isdigit():
        raise ValueError("scope must be all, live or test, and limit a positive integer")
    events = state.events(
        event=_one(query, "event"),
        pixel=_one(query, "pixel"),
        event_id=_one(query, "event_id"),
        test_event_code=_one(query, "test_event_code"),
        scope=scope,
        limit=min(int(limit_text), MAX_EVENTS_LIMIT),
    )
    return {"count": len(events), "events": [e.to_json() for e in events]}


def _post_tokens(state: SandboxState, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or "tokens" not in doc:
        raise ConfigError(['expected {"tokens": [...], "merge": false}'])
    state.set_tokens(parse_tokens(doc["tokens"]), merge=bool(doc.get("merge", False)))
    return {"tokens": state.tokens()}


def _post_faults(state: SandboxState, doc: Any) -> dict[str, Any]:
    state.set_faults(FaultConfig.from_json(doc))
    return state.faults()


def _post_reset(state: SandboxState, _doc: Any) -> dict[str, Any]:
    state.reset()
    return {"reset": True}


_GET_ROUTES: dict[str, Callable[[SandboxState, Mapping[str, list[str]]], Any]] = {
    "/healthz": lambda _state, _query: {"status": "ok"},
    "/sandbox/stats": lambda state, _query: state.stats(),
    "/sandbox/events": _get_events,
    page.FEED_PATH: page.feed,
    "/sandbox/faults": lambda state, _query: state.faults(),
    "/sandbox/tokens": lambda state, _query: {"tokens": state.tokens()},
}
_POST_ROUTES: dict[str, Callable[[SandboxState, Any], Any]] = {
    "/sandbox/tokens": _post_tokens,
    "/sandbox/faults": _post_faults,
    "/sandbox/reset": _post_reset,
}


class Sandbox:
    """A TikTok-compatible Events API server in a background thread.

    ::

        with Sandbox(tokens={"tok"}, pixels={"D34FV3JC77U1PDQ72P1G"}, faults="seed=7") as sb:
            httpx.post(sb.endpoint, headers={"Access-Token": "tok"}, json=body)
            assert sb.stats()["events"]["accepted"] == 1

    The port is bound when the object is built (``port=0`` picks a free one, see
    :attr:`url`); serving starts with :meth:`start` or ``with``. ``pixels`` limits the
    pixel codes every token may use (None: any well-formed code). ``faults`` is a
    :class:`FaultConfig`, its spec string or its JSON object. ``seed`` seeds the fault
    dice when the fault config has no seed of its own. ``max_body_bytes``: larger bodies get
    413. ``idle_timeout_s``: how long a connection may sit silent (between requests or within
    one) before it is closed. ``max_connections``: connections open at once; more get 503.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: Iterable[TokenLike] = (DEFAULT_TOKEN,),
        pixels: Iterable[str] | None = None,
        faults: FaultConfig | str | Mapping[str, Any] | None = None,
        seed: int | None = None,
        max_stored_events: int = 100_000,
        max_dedup_keys: int = 1_000_000,
        max_body_bytes: int = MAX_BODY_BYTES,
        idle_timeout_s: float = 120.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be positive, not {max_connections}")
        self.state = SandboxState(
            tokens=tokens,
            pixels=pixels,
            faults=faults,
            seed=seed,
            max_stored_events=max_stored_events,
            max_dedup_keys=max_dedup_keys,
        )
        self._server = _Server(
            (host, port),
            self.state,
            max_body_bytes=max_body_bytes,
            idle_timeout_s=idle_timeout_s,
            max_connections=max_connections,
        )
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- life -------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Serve in a daemon thread (idempotent)."""
        if self._closed:
            raise RuntimeError("this sandbox is closed")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.02},  # close() waits up to this long
                name="sandbox-server",
                daemon=True,
            )
            self._thread.start()
            log.info("sandbox: serving on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving, end open connections, release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.close_connections(timeout=5.0)
        self._server.server_close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- where ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The full track URL, what a client configures as TikTok's endpoint."""
        return self.url + TRACK_PATH

    # -- inspection and control (the same as the HTTP control endpoints) ---------------

    def stats(self) -> dict[str, Any]:
        """Every counter, as ``GET /sandbox/stats`` returns it."""
        return self.state.stats()

    def events(
        self,
        *,
        event: str | None = None,
        pixel: str | None = None,
        event_id: str | None = None,
        test_event_code: str | None = None,
        scope: str = "all",
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Stored events matching every filter given (latest ``limit``, oldest first),
        each ``{"seq", "event_source", "pixel", "test_event_code", "request_id",
        "received_at", "event"}`` (``pixel`` is the request's ``event_source_id``)."""
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {sorted(_SCOPES)}")
        found = self.state.events(
            event=event,
            pixel=pixel,
            event_id=event_id,
            test_event_code=test_event_code,
            scope=scope,
            limit=limit,
        )
        return [e.to_json() for e in found]

    def faults(self) -> dict[str, Any]:
        """The fault configuration (JSON form and spec) and its progress."""
        return self.state.faults()

    def set_faults(self, faults: FaultConfig | str | Mapping[str, Any] | None) -> FaultConfig:
        """Replace the fault configuration (None: no faults); its state starts afresh."""
        return self.state.set_faults(faults)

    def set_tokens(self, tokens: Iterable[TokenLike], *, merge: bool = False) -> list[str]:
        """Make ``tokens`` the accepted ones (added to them when ``merge``); returns labels."""
        return self.state.set_tokens(tokens, merge=merge)

    def tokens(self) -> list[dict[str, Any]]:
        """Configured tokens as ``{"label", "expired", "pixels"}`` (never the token)."""
        return self.state.tokens()

    def reset(self) -> None:
        """Forget stored events, dedup keys and counters; tokens and faults stay."""
        self.state.reset()

    def wait_until(
        self, condition: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Block until ``condition(stats)`` holds; returns those stats. Raises
        :class:`TimeoutError` (with the last stats) after ``timeout`` seconds."""
        if not self.state.wait_until(condition, timeout):
            raise TimeoutError(f"sandbox condition not met in {timeout}s: {self.stats()}")
        return self.stats()
