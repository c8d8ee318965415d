"""The processor's one error tree.

Every error the processor raises about the world outside it (its configuration,
a record, the Kafka cluster, the dead-letter topic) is one of these, and
third-party exceptions are translated at the boundary with ``raise … from exc``::

    ProcessorError
    ├── ConfigError            bad configuration: fail at start-up, naming every field
    ├── InvalidRecord          one record can never become an event: dead-letter it, commit past it
    ├── SchemaViolation        a document breaks a JSON Schema (path + message)
    ├── DeadLetterWriteError   the broker will not take a dead letter (too large, refused)
    ├── KafkaClientError       the Kafka client cannot do what was asked (create a topic, produce)
    └── StopProcessing         the member's loop must end: the dead-letter limit, a dead
                               letter that cannot be written, a fatal Kafka error

TikTok's answers are not exceptions: the sink classifies each one as a value
(:class:`processor.sink.classify.Classification`, whose ``verdict`` is success,
partial, retryable, bad payload or fatal) and acts on it; the table is in
docs/ARCHITECTURE.md.

``ValueError``, ``TypeError`` and ``RuntimeError`` are left for a caller that breaks
a function's contract (a sender started twice, a negative rate): a bug in the
calling code, never a reaction to input.
"""

from __future__ import annotations

from collections.abc import Sequence


class ProcessorError(Exception):
    """Base of every error the processor raises on purpose."""


class ConfigError(ProcessorError):
    """The configuration is invalid. ``problems`` lists every one as ``path: message``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class SchemaViolation(ProcessorError):
    """A document does not match a JSON Schema.

    ``path`` is the dotted location of the offending value (``user.email``), empty
    for the document itself.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class InvalidRecord(ProcessorError):
    """A record that can never be turned into a deliverable event.

    Never retried: it is dead-lettered with ``stage`` and ``reason`` and its offset
    is then committed past. ``stage`` is one of :class:`processor.types.Stage`.
    """

    def __init__(self, stage: str, reason: str, mapping: str | None = None) -> None:
        self.stage = stage
        self.reason = reason
        self.mapping = mapping
        super().__init__(f"{stage}: {reason}")


class DeadLetterWriteError(ProcessorError):
    """A dead letter was not written. ``too_large``: the broker (or the producer) refused
    its size, so a smaller letter may still go through; otherwise it never will, and the
    processor stops without committing past the record."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        self.reason = reason
        self.too_large = too_large
        super().__init__(reason)


class KafkaClientError(ProcessorError):
    """The Kafka client could not do what was asked (create a topic, have records
    acknowledged); the message says what and why."""


class StopProcessing(ProcessorError):
    """Ends a member's loop with a reason (the dead-letter limit, a dead letter that
    cannot be written, a fatal Kafka error, a rejection with no dead-letter topic).
    The loop drains, commits what is done and exits with status 1."""
