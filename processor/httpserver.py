"""A small HTTP/1.0 server for scrapes and probes that idle or slow clients cannot starve.

Owns :class:`GuardedHTTPServer`, which :class:`~processor.metrics.MetricsServer` runs on,
and :class:`ReceivedRequestHandler`, the base class of its handlers.

The stdlib's ``ThreadingHTTPServer`` gives every accepted connection a thread at once, and
that thread blocks reading the request, so each idle or half-sent connection costs a thread,
without limit and for as long as the client likes. A per-read socket timeout does not fix
that: a client sending a byte every few seconds never trips it. Here one thread (the loop)
accepts connections and reads their request heads without blocking, and only a complete
head is handed to one of ``max_threads`` worker threads. So:

* an idle or slow connection costs a file descriptor and a few bytes, never a thread, and is
  closed ``timeout_s`` after it connected if its request head has not arrived by then, however
  its bytes trickle in (the deadline is per connection, not per read);
* at most ``max_connections`` connections are open; at the cap the one that has waited longest
  without finishing its request is dropped to make room, as a scraper or probe sends its
  request the moment it connects; only when every connection holds a complete request is a
  new one answered 503;
* complete requests queue for the workers in arrival order, so a burst of scrapes waits a few
  milliseconds instead of being refused, and no more than ``max_threads`` answer at once;
* one request a connection (HTTP/1.0, which Prometheus and kubelet probes speak happily): the
  connection closes after its answer, so nothing waits on keep-alive either; writing the
  answer is bounded by ``timeout_s`` a send.

It is a :class:`socketserver.TCPServer` for binding, listening and its handlers' sake, but it
serves only with :meth:`GuardedHTTPServer.serve_forever`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import selectors
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Final, Literal

log = logging.getLogger(__name__)

#: Bytes read from a connection at a time while its head arrives.
_RECV_BYTES: Final = 4096
#: accept() errors meaning the process or host is out of descriptors or memory: accepting
#: again at once would fail the same way, so the loop pauses instead of spinning.
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE_S: Final = 0.05


def _canned(status: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY: Final = _canned(503, "Service Unavailable")
_HEAD_TOO_LARGE: Final = _canned(431, "Request Header Fields Too Large")


class ReceivedRequestHandler(BaseHTTPRequestHandler):
    """Base class of :class:`GuardedHTTPServer` handlers: the server has read the request head,
    so the handler parses it from memory and only writes to the socket. Request bodies are
    not read (nothing served here takes one)."""

    # The stdlib takes a request it cannot parse for HTTP/0.9 and answers it without a status
    # line or headers; nothing speaks 0.9 any more, so refusals get a real HTTP answer.
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        # ``request`` is (head, socket), socketserver's convention for a request that arrived
        # as data (its datagram servers pass (packet, socket)).
        head, sock = self.request
        self.connection = sock
        self.rfile = io.BytesIO(head)
        self.wfile = sock.makefile("wb")


@dataclass(slots=True)
class _Pending:
    """A connection whose request head is still arriving."""

    address: Any
    deadline: float
    #: What has arrived so far; None once refused: then what arrives is read and dropped until
    #: the client closes or the deadline, so closing with unread bytes does not reset the
    #: connection before the client has read the refusal.
    head: bytearray | None = field(default_factory=bytearray)


def _end_of_head(buffer: bytearray, start: int) -> int | None:
    """Just past the empty line ending the head, or None. Lines end in CRLF or, as the stdlib
    parser also accepts, a bare LF."""
    ends = [i + len(m) for m in (b"\n\r\n", b"\n\n") if (i := buffer.find(m, start)) >= 0]
    return min(ends) if ends else None


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class GuardedHTTPServer(socketserver.TCPServer):
    """Serves ``handler`` (a :class:`ReceivedRequestHandler`) with a bounded number of threads
    and connections; see the module docstring. Binds and listens when built (``OSError`` if
    it cannot); settings that are not positive raise ``ValueError``."""

    allow_reuse_address = True
    #: The kernel's queue of connections not yet accepted. The loop accepts eagerly, so this
    #: only has to absorb a burst (100 scrapers connecting in the same millisecond).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[ReceivedRequestHandler],
        *,
        timeout_s: float = 10.0,
        max_threads: int = 8,
        max_connections: int = 256,
        max_head_bytes: int = 16 * 1024,
        name: str = "http",
    ) -> None:
        settings = {
            "timeout_s": timeout_s,
            "max_threads": max_threads,
            "max_connections": max_connections,
            "max_head_bytes": max_head_bytes,
        }
        bad = [
            f"{key} must be positive, not {value}" for key, value in settings.items() if value <= 0
        ]
        if bad:
            raise ValueError("; ".join(bad))
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self._handler = handler
        super().__init__(address, handler)
        self.socket.setblocking(False)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._workers = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix=name)
        self._selector = selectors.DefaultSelector()
        #: Connections still sending their heads, oldest first (the loop's alone).
        self._pending: dict[socket.socket, _Pending] = {}
        #: Connections handed to the workers and not yet closed.
        self._busy = 0
        self._lock = threading.Lock()
        self._state: Literal["new", "serving", "stopped"] = "new"
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._starved = False

    # -- life -----------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections, gather their request heads and hand complete ones to the
        workers until :meth:`shutdown`. ``poll_interval``: the longest the loop sleeps with
        nothing to do (shutdown wakes it at once anyway)."""
        with self._lock:
            if self._state != "new":
                return
            self._state = "serving"
        selector = self._selector
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_reader, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(self._wait(poll_interval)):
                    try:
                        self._on_readable(key.fileobj)
                    except Exception:
                        # A bug with one connection must not stop every scrape and probe.
                        log.exception("http: error serving a connection")
                        conn = key.fileobj
                        if isinstance(conn, socket.socket) and conn in self._pending:
                            self._drop(conn)
                self._expire(time.monotonic())
        finally:
            for sock in list(self._pending):
                self._drop(sock)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it to return (idempotent; also before it
        ever ran). Requests already with the workers are still answered."""
        with self._lock:
            serving = self._state == "serving"
            self._state = "stopped"
        self._stopping.set()
        if serving:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
            self._stopped.wait()

    def server_close(self) -> None:
        """Stop, wait for the workers' answers (each bounded by ``timeout_s`` a send) and
        release the port."""
        self.shutdown()
        self._workers.shutdown(wait=True)
        self._selector.close()
        _close(self._wake_reader)
        _close(self._wake_writer)
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away mid-answer is routine (a scrape timing out, a probe giving up).
        log.debug("http: connection from %s ended with an error", client_address, exc_info=True)

    # -- the loop -------------------------------------------------------------------------

    def _wait(self, poll_interval: float) -> float:
        if not self._pending:
            return poll_interval
        oldest = next(iter(self._pending.values()))
        return max(0.0, min(poll_interval, oldest.deadline - time.monotonic()))

    def _on_readable(self, fileobj: object) -> None:
        if fileobj is self.socket:
            self._accept()
        elif fileobj is self._wake_reader:
            with contextlib.suppress(OSError):
                self._wake_reader.recv(64)  # it only wakes the loop to see _stopping
        elif isinstance(fileobj, socket.socket):
            self._receive(fileobj)

    def _accept(self) -> None:
        # At most a backlog's worth at a time, so the heads of accepted ones keep flowing in
        # a flood of connections.
        for _ in range(self.request_queue_size):
            try:
                sock, address = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    if not self._starved:
                        log.warning("http: cannot accept connections: %s", exc.strerror)
                    self._starved = True
                    self._stopping.wait(_ACCEPT_PAUSE_S)
                return  # e.g. ECONNABORTED, a client gone before it was accepted
            self._starved = False
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: Any) -> None:
        sock.setblocking(False)
        with self._lock:
            busy = self._busy
        if len(self._pending) + busy >= self.max_connections:
            if not self._pending:
                self._send_and_close(sock, _BUSY)  # every connection holds a request
                return
            self._drop(next(iter(self._pending)))
        self._pending[sock] = _Pending(address, time.monotonic() + self.timeout_s)
        self._selector.register(sock, selectors.EVENT_READ)

    def _receive(self, sock: socket.socket) -> None:
        pending = self._pending.get(sock)
        if pending is None:
            return  # dropped earlier in the same batch of events (to make room, say)
        try:
            data = sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self._drop(sock)
            return
        if not data:
            self._drop(sock)  # the client gave up, or has read its refusal
            return
        head = pending.head
        if head is None:
            return  # refused: draining
        start = max(0, len(head) - 2)
        head += data
        end = _end_of_head(head, start)
        if end is None and len(head) <= self.max_head_bytes:
            return  # more to come
        if end is None or end > self.max_head_bytes:
            with contextlib.suppress(OSError):
                sock.send(_HEAD_TOO_LARGE)
                sock.shutdown(socket.SHUT_WR)
            pending.head = None
            return
        self._selector.unregister(sock)
        del self._pending[sock]
        with self._lock:
            self._busy += 1
        self._workers.submit(self._answer, sock, pending.address, bytes(head[:end]))

    def _expire(self, now: float) -> None:
        # Deadlines grow in arrival order (a fixed timeout on a monotonic clock), so the
        # expired connections are the first ones.
        while self._pending:
            sock, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                return
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        del self._pending[sock]
        self._selector.unregister(sock)
        _close(sock)

    def _send_and_close(self, sock: socket.socket, reply: bytes) -> None:
        # A fresh socket's send buffer takes a short reply whole, so this never blocks.
        with contextlib.suppress(OSError):
            sock.send(reply)
        _close(sock)

    # -- the workers ----------------------------------------------------------------------

    def _answer(self, sock: socket.socket, address: Any, head: bytes) -> None:
        try:
            sock.settimeout(self.timeout_s)
            self._handler((head, sock), address, self)
        except Exception:
            self.handle_error(sock, address)
        finally:
            _close(sock)
            with self._lock:
                self._busy -= 1
