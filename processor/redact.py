"""Taking secrets out of text before it is shortened, logged or dead-lettered.

Owns :func:`redact` and :func:`shorten`. A reason built from what a server said
(TikTok's ``message``, a proxy echoing the request) may quote the access token, and
reasons end up in ``dlq.reason`` headers, log lines and ``/readyz``. Two rules keep
the token out of all of them:

- **redact first, cut second**: cutting first can split the token and leave a prefix
  that no search for the whole token finds any more;
- **a run that starts like the secret is redacted too**: any run of text that begins
  with the secret's first :data:`MIN_PREFIX` characters and goes on matching it, so a
  token that a server cut short itself does not leak its beginning either.

Text that went through :func:`redact` holds no run of :data:`MIN_PREFIX` or more
characters that begins the secret, and neither does any cut of it: :func:`shorten`
can therefore never leave part of a token behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

#: What a redacted secret (or the start of one) is replaced with.
REDACTED: Final = "********"
#: Marks the end of a shortened text.
ELLIPSIS: Final = "…"
#: Secrets shorter than this are not redacted: replacing two or three characters
#: everywhere would shred ordinary text, and no real token is that short.
MIN_SECRET: Final = 4
#: A run of text that matches this many leading characters of a secret (or the whole
#: secret, when it is shorter) counts as a leaked start of it.
MIN_PREFIX: Final = 8


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret, and every run that begins like
    one (:data:`MIN_PREFIX` characters or more), replaced by :data:`REDACTED`."""
    if isinstance(secrets, str):
        # A bare string is an iterable of one-character "secrets", all too short to
        # redact: the token would pass through untouched.
        raise TypeError("secrets must be a collection of strings, not a string")
    for secret in secrets:
        if len(secret) >= MIN_SECRET:
            text = _redact_one(text, secret)
    return text


def shorten(text: str, limit: int, secrets: Iterable[str] = ()) -> str:
    """``text`` redacted of ``secrets``, then cut to ``limit`` characters (with
    :data:`ELLIPSIS` appended when something was cut)."""
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    text = redact(text, secrets)
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def _redact_one(text: str, secret: str) -> str:
    head = secret[:MIN_PREFIX]
    start = text.find(head)
    if start < 0:
        return text  # the common case: one C-speed scan, no copy
    parts: list[str] = []
    done = 0
    while start >= 0:
        # Extend the match as far as it goes on agreeing with the secret: the whole
        # secret, or the part of it a server (or an earlier cut) left.
        end = start + len(head)
        stop = min(len(text), start + len(secret))
        while end < stop and text[end] == secret[end - start]:
            end += 1
        parts += (text[done:start], REDACTED)
        done = end
        start = text.find(head, end)
    parts.append(text[done:])
    return "".join(parts)
