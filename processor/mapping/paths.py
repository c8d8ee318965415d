"""Field paths (``page.url``, ``order.items[0].sku``) compiled into getters.

A path is parsed once, at start-up, into a closure specialised for its length;
reading a field on the hot path is then one or two ``dict.get`` calls with no
string work. A getter returns ``None`` for anything missing or of the wrong
shape (a list where a dict was expected): absence is not an error here, the
caller decides what a missing value means.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Getter = Callable[[Any], Any]
"""Reads a value out of a decoded record (or ``None``)."""

_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_INDEX = re.compile(r"\[(\d+)\]")


class PathError(ValueError):
    """A field path that cannot be parsed."""


def parse_path(path: str) -> tuple[str | int, ...]:
    """``"items[0].sku"`` → ``("items", 0, "sku")``."""
    if not isinstance(path, str):
        raise PathError(f"a field path is text, not {type(path).__name__}")
    if not path or path.strip() != path:
        raise PathError(f"not a field path: {path!r}")
    parts: list[str | int] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None:
            raise PathError(f"not a field path: {path!r}")
        parts.append(match.group(1))
        parts.extend(int(i) for i in _INDEX.findall(match.group(2)))
    return tuple(parts)


def _step(value: Any, part: str | int) -> Any:
    if isinstance(part, str):
        return value.get(part) if value.__class__ is dict else None
    if value.__class__ is list and -len(value) <= part < len(value):
        return value[part]
    return None


def compile_path(path: str) -> Getter:
    """A getter for ``path``; specialised closures for the common short paths."""
    parts = parse_path(path)
    if all(isinstance(p, str) for p in parts):
        if len(parts) == 1:
            (a,) = parts

            def get1(record: Any) -> Any:
                return record.get(a) if record.__class__ is dict else None

            return get1
        if len(parts) == 2:
            a, b = parts

            def get2(record: Any) -> Any:
                v = record.get(a) if record.__class__ is dict else None
                return v.get(b) if v.__class__ is dict else None

            return get2
        if len(parts) == 3:
            a, b, c = parts

            def get3(record: Any) -> Any:
                v = record.get(a) if record.__class__ is dict else None
                v = v.get(b) if v.__class__ is dict else None
                return v.get(c) if v.__class__ is dict else None

            return get3

    def get_n(record: Any) -> Any:
        value = record
        for part in parts:
            value = _step(value, part)
            if value is None:
                return None
        return value

    return get_n
