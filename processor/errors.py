"""The processor's one error tree.

Every exception the processor raises to a caller is one of these; third-party
exceptions are wrapped at the boundary with ``raise … from exc``::

    ProcessorError
    ├── ConfigError            bad configuration: fail at start-up, naming every field
    ├── InvalidRecord          one record can never become an event: dead-letter it, commit past it
    ├── SchemaViolation        a document breaks a JSON Schema (path + message)
    ├── DeadLetterWriteError   the broker will not take a dead letter (too large, refused)
    └── SinkError              the TikTok request did not succeed
        ├── RetryableSinkError   network, timeout, HTTP 408/429/5xx, rate-limit and server codes
        ├── PermanentSinkError   bad payload codes: bisect, deliver the good, dead-letter the bad
        └── FatalSinkError       bad token or no permission: stop sending, alert, commit nothing
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


class SinkError(ProcessorError):
    """A request to the TikTok Events API did not succeed.

    ``code`` is TikTok's body code when there was a body, ``status`` the HTTP status
    when there was a response. Neither ever carries the access token.
    """

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class RetryableSinkError(SinkError):
    """Worth trying again later: the request may succeed unchanged.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class PermanentSinkError(SinkError):
    """TikTok rejected the payload: the same request will always fail."""


class FatalSinkError(SinkError):
    """The credentials are wrong (expired/invalid token, no permission on the pixel).

    Nothing can be delivered until an operator acts; dead-lettering would lose
    every event, so the processor pauses and commits nothing past the failure.
    """
