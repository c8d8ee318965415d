"""The one rejection path: every record or event given up on goes through
:meth:`Rejections.reject`, whatever the stage (decode, input-schema, mapping, stale,
output-schema, or api when TikTok refused the event for good).

It counts the rejection (the run report and ``records_dead_lettered_total``), feeds
the dead-letter guard (:class:`processor.dlq.DeadLetterGuard`), and writes the dead
letter; the record's unit of work is done only once the broker acknowledged the
letter (rule 2 of :mod:`processor.ledger`). A rejection for a fenced partition does
nothing: the partition's next owner reads the record again. Once the guard has
tripped, no more dead letters are written: what is rejected after that (the rest of
an in-flight batch TikTok refused, say) stays not done and uncommitted, so the
restart handles it under the fixed configuration instead of it being dead-lettered.

:meth:`Rejections.check` raises :class:`processor.errors.StopProcessing` once the
guard has tripped or a dead letter could not be written; the loop calls it every turn.
"""

from __future__ import annotations

from processor.dlq import DeadLetter, DeadLetterGuard, DeadLetterWriter
from processor.errors import StopProcessing
from processor.ledger import Ledger, Ticket
from processor.metrics import Metrics
from processor.report import RunReport


class Rejections:
    """Counts, guards and dead-letters rejections.

    ``writer`` None with ``dead_letter`` True: no dead-letter topic is configured, and a
    rejection stops the processor (nothing may be committed past it). ``dead_letter``
    False (``replay-dlq``, whose input is the dead-letter topic): a rejection is only
    counted, and its record is done at once.
    """

    def __init__(
        self,
        ledger: Ledger,
        guard: DeadLetterGuard,
        metrics: Metrics,
        report: RunReport,
        writer: DeadLetterWriter | None,
        *,
        dead_letter: bool = True,
    ) -> None:
        self._ledger = ledger
        self._guard = guard
        self._metrics = metrics
        self._report = report
        self._writer = writer
        self._dead_letter = dead_letter
        self._write_error: str | None = None

    def reject(self, ticket: Ticket, stage: str, reason: str, mapping: str | None) -> None:
        """Give up on one unit of ``ticket``'s work at ``stage`` for ``reason``."""
        if not self._ledger.live(ticket) or self._guard.tripped is not None:
            # Fenced: the next owner reads the record again. Past the dead-letter limit:
            # the processor is stopping, and the record stays not done, uncommitted, for
            # the restart (after a bad deploy is fixed it may go through).
            return
        topic, partition, offset = ticket.source
        self._report.reject(stage)
        self._metrics.records_dead_lettered.labels(topic, stage).inc()
        self._guard.observe(True, f"{stage}: {reason}")
        if not self._dead_letter:
            self._ledger.dead_lettered(ticket)
            return
        writer = self._writer
        if writer is None:
            raise StopProcessing(
                f"record {topic}[{partition}]@{offset} rejected at {stage} ({reason}) "
                "and no kafka.dead_letter_topic is configured"
            )
        record = ticket.record
        letter = DeadLetter(
            topic, partition, offset, record.key, record.value, record.header_list(),
            stage, reason, mapping,
        )  # fmt: skip

        def written(error: str | None) -> None:
            # Runs inside the producer's poll(), on the poll thread; check() stops on it.
            if error is not None:
                self._write_error = f"cannot write a dead letter to {writer.topic}: {error}"
                return
            self._ledger.dead_lettered(ticket)

        writer.write(letter, written)

    def passed(self) -> None:
        """A record went through (mapped, or filtered out on purpose)."""
        self._guard.observe(False)

    @property
    def outstanding(self) -> int:
        """Dead letters written and not yet acknowledged."""
        return self._writer.outstanding if self._writer is not None else 0

    def poll(self) -> None:
        """Serve the dead-letter producer's acknowledgements."""
        if self._writer is not None:
            self._writer.poll()

    def check(self) -> None:
        """Raise :class:`StopProcessing` once the processor must stop."""
        if self._guard.tripped is not None:
            raise StopProcessing(f"dead-letter limit reached: {self._guard.tripped}")
        if self._write_error is not None:
            raise StopProcessing(self._write_error)
