"""Value specifications: where a mapped field's value comes from.

A value is one of::

    PATH                                   a field of the record: page.url, items[0].sku
    {path: PATH, default: V}               a field, or V when it is missing
    {const: V}                             a constant
    {first: [VALUE, …]}                    the first that is present and not empty
    {from_url: VALUE, param: NAME}         a parameter of a URL's query, else of its fragment
                                           (ttclid from the landing URL)
    {template: "text {PATH} text"}         text with fields filled in; missing if any field is
    {lookup: VALUE, table: {K: V}, default: V}   a value translated through a table

(``{each: PATH, fields: {…}}`` builds ``properties.contents`` from line items and is
compiled by :mod:`processor.mapping.compiler`, which knows the content fields.)
Each compiles once into a :data:`~processor.mapping.paths.Getter`. A getter never
raises on the record's shape; the one error it raises is the template's
:class:`~processor.mapping.coerce.CoerceError` for a number it cannot write exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from processor.mapping.coerce import CoerceError, exact_float_text
from processor.mapping.paths import Getter, PathError, compile_path

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def is_present(value: Any) -> bool:
    """Missing, ``null`` and empty text count as absent."""
    return value is not None and value != ""


def url_param(url: Any, name: str) -> str | None:
    """The ``name`` parameter of a URL, trimmed, or None when there is none.

    The query is searched first, then the fragment, because a parameter appended to a
    landing URL that has a fragment lands in it: ``https://x/p#ttclid=ABC``,
    ``https://x/p?a=1#b=2&ttclid=ABC``, and for hash routes ``https://x/#/p?ttclid=ABC``
    (so ``?`` separates parameters as ``&`` does). Never raises: a URL that cannot be
    parsed (or is not text) has no parameters.
    """
    if not isinstance(url, str) or f"{name}=" not in url:
        return None
    try:
        parts = urlsplit(url)
        for section in (parts.query, parts.fragment):
            for key, value in parse_qsl(section.replace("?", "&")):
                if key == name and value.strip():
                    return value.strip()
    except ValueError:  # e.g. an unclosed IPv6 bracket: "https://[::1/p?ttclid=A"
        return None
    return None


def describe(spec: Any) -> str:
    """A short description of where a value comes from, for messages and summaries."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        if "path" in spec:
            return str(spec["path"])
        if "const" in spec:
            return "constant"
        if "first" in spec:
            options = spec["first"]
            if not isinstance(options, list):
                return "first of ?"
            return "first of " + ", ".join(describe(s) for s in options)
        if "from_url" in spec:
            return f"?{spec['param']}= of {describe(spec['from_url'])}"
        if "template" in spec:
            return "template"
        if "lookup" in spec:
            return f"lookup of {describe(spec['lookup'])}"
        if "each" in spec:
            return f"each of {spec['each']}"
    return "value"


def compile_value(spec: Any, where: str, problems: list[str]) -> Getter | None:
    """Compile ``spec``; on error append a ``where``-prefixed message and return None."""
    try:
        return _compile(spec, where, problems)
    except PathError as exc:
        problems.append(f"{where}: {exc}")
        return None


#: Every object form: its identifying key and the keys it allows.
FORMS: dict[str, frozenset[str]] = {
    "const": frozenset({"const"}),
    "path": frozenset({"path", "default"}),
    "first": frozenset({"first"}),
    "from_url": frozenset({"from_url", "param"}),
    "template": frozenset({"template"}),
    "lookup": frozenset({"lookup", "table", "default"}),
    "each": frozenset({"each", "fields"}),
}


def form_problem(spec: Mapping[str, Any]) -> str | None:
    """Why ``spec`` is not one of :data:`FORMS`, or None."""
    forms = [f for f in FORMS if f in spec]
    if len(forms) != 1:
        return f"a value object has exactly one of {', '.join(FORMS)} (got {sorted(spec)})"
    allowed = FORMS[forms[0]]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        return f"{forms[0]!r} does not take {unknown} (allowed: {sorted(allowed)})"
    missing = sorted(k for k in allowed if k not in spec and k != "default")
    if missing:
        return f"{forms[0]!r} needs {missing}"
    return None


def _compile(spec: Any, where: str, problems: list[str]) -> Getter | None:
    if isinstance(spec, str):
        return compile_path(spec)
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: a value is a field path or an object such as {{const: …}}")
        return None
    problem = form_problem(spec)
    if problem is not None:
        problems.append(f"{where}: {problem}")
        return None
    form = next(f for f in FORMS if f in spec)
    return _FORM_COMPILERS[form](spec, where, problems)


def _const(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    constant = spec["const"]
    return lambda record: constant


def _path(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    get = compile_path(spec["path"])
    if "default" not in spec:
        return get
    default = spec["default"]

    def with_default(record: Any) -> Any:
        value = get(record)
        return value if is_present(value) else default

    return with_default


def _first(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    if not isinstance(spec["first"], list) or not spec["first"]:
        problems.append(f"{where}.first: a non-empty list of values")
        return None
    options = [
        compile_value(s, f"{where}.first[{i}]", problems) for i, s in enumerate(spec["first"])
    ]
    if any(o is None for o in options):
        return None
    getters = tuple(o for o in options if o is not None)

    def first(record: Any) -> Any:
        for get in getters:
            value = get(record)
            if is_present(value):
                return value
        return None

    return first


def _from_url(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    url_of = compile_value(spec["from_url"], f"{where}.from_url", problems)
    param = spec["param"]
    if not isinstance(param, str) or not param:
        problems.append(f"{where}.param: the name of a query parameter")
        return None
    if url_of is None:
        return None
    return lambda record: url_param(url_of(record), param)


def _lookup(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    key_of = compile_value(spec["lookup"], f"{where}.lookup", problems)
    if not isinstance(spec["table"], Mapping):
        problems.append(f"{where}.table: a mapping of values to values")
        return None
    if key_of is None:
        return None
    table = {str(k): v for k, v in spec["table"].items()}
    fallback = spec.get("default")
    return lambda record: table.get(str(key_of(record)), fallback)


def _each(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    problems.append(f"{where}: 'each' builds properties.contents only")
    return None


def _template_form(spec: Mapping[str, Any], where: str, problems: list[str]) -> Getter | None:
    if not isinstance(spec["template"], str):
        problems.append(f"{where}.template: text with {{field.path}} placeholders")
        return None
    return _template(spec["template"], where, problems)


_FORM_COMPILERS: dict[str, Callable[[Mapping[str, Any], str, list[str]], Getter | None]] = {
    "const": _const,
    "path": _path,
    "first": _first,
    "from_url": _from_url,
    "template": _template_form,
    "lookup": _lookup,
    "each": _each,
}


def _template(text: str, where: str, problems: list[str]) -> Getter | None:
    pieces: list[str] = []
    getters: list[tuple[str, Getter]] = []
    last = 0
    for match in _PLACEHOLDER.finditer(text):
        pieces.append(text[last : match.start()])
        path = match.group(1).strip()
        try:
            getters.append((path, compile_path(path)))
        except PathError as exc:
            problems.append(f"{where}.template: {exc}")
            return None
        last = match.end()
    tail = text[last:]
    if not getters:
        return lambda record: text

    def render(record: Any) -> Any:
        out = []
        for piece, (path, get) in zip(pieces, getters, strict=True):
            value = get(record)
            if not is_present(value) or isinstance(value, dict | list):
                return None
            out.append(piece)
            out.append(_exact_text(value, path) if value.__class__ is float else str(value))
        out.append(tail)
        return "".join(out)

    return render


def _exact_text(value: float, path: str) -> str:
    # A template often builds an order or content id: a rounded number in it would
    # make two records share one id, so it is refused like a rounded id.
    try:
        return exact_float_text(value)
    except CoerceError as exc:
        raise CoerceError(f"{{{path}}} in the template: {exc}") from None
