"""Reading a configuration file as YAML, within bounds, into plain JSON-like data.

The configuration is written by people and sometimes by attackers, so reading it
must neither crash nor explode. A document is refused, with one line naming the
file and line, when it:

- is larger than :data:`MAX_BYTES` or is not UTF-8 text;
- nests deeper than :data:`MAX_DEPTH` (the schema validator, the rule compiler and
  the summary are all recursive) or holds more than :data:`MAX_NODES` values,
  counting what each alias (``*name``) repeats: nested aliases ("billion laughs")
  make a kilobyte expand to gigabytes when the result is walked, and every walk
  (validation, compilation) costs what the expanded document holds;
- has an alias inside the value it names (a cycle);
- repeats a key in a mapping (YAML would silently keep the last one);
- has a key that is not a string, an integer too long to convert, ``.nan``, or a
  ``!!binary``, ``!!set``, ``!!omap`` or ``!!pairs`` value (JSON Schema has no such
  types, and the validator raises on them).

Dates stay the text they were written as (``2026-01-01``): JSON has no dates, and
the value is compared with strings from JSON records.

Aliases are allowed within those limits because ``yaml.safe_dump`` writes them for
any object used twice, so generated configurations have them. The limits are
checked on libyaml's event stream first, which never recurses and stops at the
first offence, with an alias counted as the size and depth of its anchor (no
expansion happens), so nothing is built from a refused document.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from processor.errors import ConfigError

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # PyYAML built without libyaml: the pure-Python parser, same behaviour
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

#: A configuration is a few kilobytes; this is a thousand times that.
MAX_BYTES: Final = 1024 * 1024
#: Mappings and lists inside each other; the example configuration needs six.
MAX_DEPTH: Final = 64
#: Scalars, mappings and lists, each alias counted as what it repeats; the example
#: configuration has about 350.
MAX_NODES: Final = 100_000

_MIB: Final = 1024 * 1024
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """Valid YAML that a configuration may not contain, and where it is."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}" if mark is not None else source


def read_yaml(data: bytes, source: str) -> Any:
    """The document in ``data`` (the bytes of file ``source``) as dicts, lists and
    scalars. Raises :class:`ConfigError` with one ``source:line: message`` problem."""
    if len(data) > MAX_BYTES:
        raise ConfigError(
            [f"{source}: larger than the {MAX_BYTES // _MIB} MiB a configuration may be"]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [
                f"{source}:{line}: not UTF-8 text "
                f"(byte 0x{data[exc.start]:02x} at offset {exc.start})"
            ]
        ) from None
    try:
        _check_events(text)
        loader = _ConfigLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _Refused as exc:
        raise ConfigError([f"{_where(source, exc.mark)}: {exc.problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(source, text, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_reader_problem(source, text, exc)]) from None


def read_yaml_file(path: Path) -> Any:
    """:func:`read_yaml` of the file at ``path``, reading at most one byte past the limit
    (a device or a huge file is refused without being read to its end)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError:  # a NUL in the name
        raise ConfigError([f"{path}: cannot read: not a usable file name"]) from None
    return read_yaml(data, str(path))


class _Open:
    """A mapping or list whose end has not been read yet."""

    __slots__ = ("anchor", "height", "nodes_before")

    def __init__(self, anchor: str | None, nodes_before: int) -> None:
        self.anchor = anchor
        self.nodes_before = nodes_before
        self.height = 1  # levels of nesting it spans, itself included


def _check_events(text: str) -> None:
    """Refuse deep nesting, too many values and cyclic aliases before anything is built.

    An anchored value's expanded size and height are recorded when it ends, so an
    alias adds them in constant time: a billion laughs is refused after a few lines.
    """
    loader = _Loader(text)
    stack: list[_Open] = []
    anchored: dict[str, tuple[int, int]] = {}  # anchor → (values, height)
    nodes = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if event is None:
                break
            size = height = 0
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
                stack.append(_Open(event.anchor, nodes))
                anchored.pop(event.anchor or "", None)  # open: an alias to it is a cycle
                nodes += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                done = stack.pop()
                size, height = nodes - done.nodes_before, done.height
                if done.anchor is not None:
                    anchored[done.anchor] = (size, height)
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
                if event.anchor is not None:
                    anchored[event.anchor] = (1, 0)
            elif isinstance(event, yaml.AliasEvent):
                size, height = _aliased(event, anchored, stack)
                nodes += size
            if stack and height:
                stack[-1].height = max(stack[-1].height, height + 1)
            if nodes > MAX_NODES:
                raise _Refused(
                    f"more than {MAX_NODES:,} values (an alias counts as the values it repeats)",
                    event.start_mark,
                )
    finally:
        loader.dispose()


def _aliased(
    event: yaml.AliasEvent, anchored: dict[str, tuple[int, int]], stack: list[_Open]
) -> tuple[int, int]:
    """The size and height an alias adds where it stands."""
    name = event.anchor or ""
    if any(entry.anchor == name for entry in stack):
        raise _Refused(f"alias *{name} is inside the value it names", event.start_mark)
    # An undefined alias is left to the composer, which reports it.
    size, height = anchored.get(name, (0, 0))
    if len(stack) + height > MAX_DEPTH:
        raise _Refused(
            f"nested deeper than {MAX_DEPTH} levels (with *{name} written out)", event.start_mark
        )
    return size, height


def _syntax_problem(source: str, text: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "invalid"
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    if mark is None:
        return f"{source}: not valid YAML: {what}{context}"
    # libyaml does not say which character it means; a tab is by far the most common.
    index = getattr(mark, "index", -1)
    tab = "; YAML is indented with spaces, not tabs" if text[index : index + 1] == "\t" else ""
    return f"{source}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {what}{context}{tab}"


def _reader_problem(source: str, text: str, exc: yaml.YAMLError) -> str:
    position = getattr(exc, "position", None)
    reason = getattr(exc, "reason", None) or "not readable"
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        return f"{source}:{line}: not valid YAML: {reason} (character {position})"
    return f"{source}: not valid YAML: {reason}"


class _ConfigLoader(_Loader):
    """The safe loader, refusing what JSON Schema cannot hold (see the module docstring)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                hint = (
                    f" ({_shown(key_node)}); quote it" if isinstance(key_node, ScalarNode) else ""
                )
                raise _Refused(
                    f"a key must be a string, not {_yaml_type(key)}{hint}", key_node.start_mark
                )
            if key in first_line:
                raise _Refused(
                    f"duplicate key {key!r} (first at line {first_line[key]})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            value: int = super().construct_yaml_int(node)
        except ValueError:
            raise _Refused(
                f"integer too long ({len(str(node.value)):,} digits)",
                node.start_mark,
            ) from None
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value: float = super().construct_yaml_float(node)
        if math.isnan(value):
            raise _Refused(".nan is not a number", node.start_mark)
        return value

    def construct_as_text(self, node: ScalarNode) -> str:
        return str(self.construct_scalar(node))

    def refuse_type(self, node: Node) -> None:
        kind = node.tag.rsplit(":", 1)[-1]
        raise _Refused(
            f"YAML type !!{kind} has no JSON equivalent and is not allowed",
            node.start_mark,
        )


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)
_ConfigLoader.add_constructor("tag:yaml.org,2002:float", _ConfigLoader.construct_yaml_float)
_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigLoader.construct_as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _ConfigLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _ConfigLoader.refuse_type)


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a list or mapping"


def _shown(node: ScalarNode) -> str:
    text = str(node.value)
    return repr(text if len(text) <= 40 else text[:40] + "…")


__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "read_yaml", "read_yaml_file"]
