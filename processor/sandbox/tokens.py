"""The sandbox's access tokens: which are valid, expired or unknown, and what they may do.

Owns the token registry. A token is never kept: only its SHA-256 digest (to recognise
it) and a *label* (to name it in stats and logs), so no stats, event, log line or
error message of the sandbox can ever contain one. Not thread-safe: the sandbox calls
it under its lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from processor.errors import ConfigError
from processor.sandbox.protocol import Code

#: The token a sandbox accepts when none is configured (a local development default,
#: not a secret: the sandbox only binds where its user tells it to).
DEFAULT_TOKEN = "sandbox-token"  # noqa: S105


@dataclass(frozen=True, slots=True)
class Token:
    """An access token to accept. ``pixels`` limits the pixel codes it may send to (None:
    the sandbox's own pixel rule). ``repr`` never shows the value."""

    value: str = field(repr=False)
    label: str | None = None
    expired: bool = False
    pixels: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.value.strip():
            raise ConfigError(["tokens: a token must not be empty"])


TokenLike = str | Token


@dataclass(frozen=True, slots=True)
class Grant:
    """What the sandbox remembers of one token."""

    label: str
    expired: bool
    pixels: frozenset[str] | None

    def to_json(self) -> dict[str, Any]:
        pixels = None if self.pixels is None else sorted(self.pixels)
        return {"label": self.label, "expired": self.expired, "pixels": pixels}


def digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def parse_tokens(doc: Any) -> list[Token]:
    """The ``tokens`` list of ``POST /sandbox/tokens``: strings or
    ``{"token", "label"?, "expired"?, "pixels"?}`` objects. Messages never quote a token."""
    if not isinstance(doc, list):
        raise ConfigError(["tokens: expected a list of tokens"])
    tokens: list[Token] = []
    problems: list[str] = []
    for index, entry in enumerate(doc):
        where = f"tokens[{index}]"
        item = {"token": entry} if isinstance(entry, str) else entry
        if not isinstance(item, Mapping):
            problems.append(f"{where}: expected a string or an object")
            continue
        value, label = item.get("token"), item.get("label")
        expired, pixels = item.get("expired", False), item.get("pixels")
        unknown = set(item) - {"token", "label", "expired", "pixels"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}.token: must be a non-empty string")
        if label is not None and not isinstance(label, str):
            problems.append(f"{where}.label: must be a string")
        if not isinstance(expired, bool):
            problems.append(f"{where}.expired: must be true or false")
        if pixels is not None and (
            not isinstance(pixels, list) or not all(isinstance(p, str) for p in pixels)
        ):
            problems.append(f"{where}.pixels: must be a list of pixel codes or null")
        if not problems:
            tokens.append(
                Token(
                    str(value),
                    label=label,
                    expired=bool(expired),
                    pixels=None if pixels is None else frozenset(pixels),
                )
            )
    if problems:
        raise ConfigError(problems)
    return tokens


class TokenRegistry:
    """Digest → :class:`Grant`. Labels stick to a token for the sandbox's lifetime."""

    def __init__(self, tokens: Iterable[TokenLike] = ()) -> None:
        self._grants: dict[bytes, Grant] = {}
        self._labels: dict[bytes, str] = {}
        self.replace(tokens)

    def replace(self, tokens: Iterable[TokenLike], *, merge: bool = False) -> list[str]:
        """Make ``tokens`` the valid ones (added to the current ones when ``merge``).
        Returns the labels now configured."""
        grants = dict(self._grants) if merge else {}
        new_labels: set[str] = set()
        for item in tokens:
            token = Token(item) if isinstance(item, str) else item
            key = digest(token.value.strip().encode())
            label = token.label or self._labels.get(key) or f"token-{len(self._labels) + 1}"
            if label in new_labels:
                raise ConfigError([f"tokens: label {label!r} is given twice"])
            new_labels.add(label)
            self._labels[key] = label
            grants[key] = Grant(label=label, expired=token.expired, pixels=token.pixels)
        self._grants = grants
        return [g.label for g in grants.values()]

    def check(self, token: bytes | None) -> tuple[Code | None, Grant | None]:
        """TikTok's token checks in order: empty (40104), unknown (40105), expired (40102)."""
        token = (token or b"").strip()
        if not token:
            return Code.TOKEN_EMPTY, None
        # Looked up by digest: comparing digests leaks nothing useful about the token.
        grant = self._grants.get(digest(token))
        if grant is None:
            return Code.TOKEN_INVALID, None
        if grant.expired:
            return Code.TOKEN_EXPIRED, grant
        return None, grant

    def break_all(self, code: int) -> None:
        """The token fault: every token now answers ``code`` (40102 expired, 40105 revoked)."""
        if code == Code.TOKEN_EXPIRED:
            self._grants = {
                k: Grant(g.label, expired=True, pixels=g.pixels) for k, g in self._grants.items()
            }
        else:
            self._grants = {}

    def to_json(self) -> list[dict[str, Any]]:
        return [g.to_json() for g in self._grants.values()]
