"""The health board of ``--workers N``: each worker's loop time and readiness in
shared memory, written by the worker's :class:`Heartbeat`, read by the supervisor's
``/healthz`` and ``/readyz`` (:mod:`processor.service.supervisor`)."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from multiprocessing.context import SpawnContext
from multiprocessing.sharedctypes import Synchronized, SynchronizedString
from typing import Protocol

log = logging.getLogger(__name__)

#: How often a worker of ``--workers N`` publishes its health to the parent, seconds.
HEARTBEAT_S = 1.0


class Member(Protocol):
    """What the heartbeat reads of a worker's loop (a :class:`processor.loop.Processor`)."""

    @property
    def last_loop(self) -> float: ...

    @property
    def ready(self) -> tuple[bool, str]: ...

    def request_stop(self) -> None: ...


class WorkerBoard:
    """The health of each worker of ``--workers N``, in shared memory: written by
    the worker every :data:`HEARTBEAT_S`, read by the parent's ``/healthz`` and
    ``/readyz``. A slot whose loop time is 0 belongs to a worker still starting."""

    REASON_BYTES = 256

    def __init__(self, context: SpawnContext, workers: int) -> None:
        self.workers = workers
        self._loops: list[Synchronized[float]] = [
            context.Value(ctypes.c_double, 0.0) for _ in range(workers)
        ]
        self._ready: list[Synchronized[bool]] = [
            context.Value(ctypes.c_bool, False) for _ in range(workers)
        ]
        self._reasons: list[SynchronizedString] = [
            context.Array(ctypes.c_char, self.REASON_BYTES) for _ in range(workers)
        ]

    def publish(self, index: int, last_loop: float, ready: bool, reason: str) -> None:
        # Cut to the slot on a character boundary (NUL ends the value).
        text = reason.encode()[: self.REASON_BYTES - 1].decode(errors="ignore").encode()
        text = text.replace(b"\0", b" ")
        self._reasons[index].value = text
        self._ready[index].value = ready
        self._loops[index].value = last_loop

    def read(self, index: int) -> tuple[float, bool, str]:
        """(last loop turn, ready, reason) of worker ``index``."""
        reason = self._reasons[index].value.decode(errors="replace")
        return self._loops[index].value, self._ready[index].value, reason


class Heartbeat:
    """A worker's thread that publishes its health to the board, and stops the worker
    gracefully if the parent dies (killed with -9, it could not pass a signal on)."""

    def __init__(self, board: WorkerBoard, index: int, processor: Member) -> None:
        self._board, self._index, self._processor = board, index, processor
        self._parent = os.getppid()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            ready, reason = self._processor.ready
            self._board.publish(self._index, self._processor.last_loop, ready, reason)
            if os.getppid() != self._parent:
                log.error("the parent process is gone: stopping")
                self._processor.request_stop()
                return
            if self._stopped.wait(HEARTBEAT_S):
                return
