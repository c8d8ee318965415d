"""The filter language of a mapping's ``when``, compiled into predicates.

A rule is one of::

    {field: PATH, equals: V}          {field: PATH, in: [V, …]}
    {field: PATH, exists: true}       {field: PATH, prefix: "…" | ["…", …]}
    {field: PATH, regex: "…"}         {field: PATH, gt|gte|lt|lte: N}
    {all: [RULE, …]}  {any: [RULE, …]}  {not: RULE}

Several operators on one ``field`` must all hold. ``regex`` is an RE2 regular
expression searched anywhere in the value (anchor it with ``^…$``). Numeric
comparisons are false for values that are not numbers (numeric strings count as
numbers). Everything is compiled once; a predicate on the hot path does no
parsing and no regex compilation.

Why RE2: predicates run on the Kafka poll thread, so one backtracking pattern
such as ``^(a+)+$`` and one long field would stall every partition of the
consumer (and, past ``max.poll.interval.ms``, get it evicted from the group).
RE2 matches in time linear in the input; the price is that backreferences and
lookaround do not exist, and such patterns are refused at start-up.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import re2

from processor.mapping.paths import Getter, PathError, compile_path

Predicate = Callable[[Any], bool]
"""True when a decoded record matches."""

_FIELD_OPERATORS = ("equals", "in", "exists", "prefix", "regex", "gt", "gte", "lt", "lte")


def _number(value: Any) -> float | None:
    if value.__class__ in (int, float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _hashable(value: Any) -> Any:
    # Lists in `in` sets are compared as tuples; dicts never match a set member.
    return tuple(value) if isinstance(value, list) else value


_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "in": (list,),
    "exists": (bool,),
    "prefix": (str, list),
    "regex": (str,),
    "gt": (int, float),
    "gte": (int, float),
    "lt": (int, float),
    "lte": (int, float),
}


def _field_test(op: str, arg: Any, where: str, problems: list[str]) -> Callable[[Any], bool] | None:
    expected = _ARG_TYPES.get(op)
    if expected is not None and (
        not isinstance(arg, expected) or (bool not in expected and isinstance(arg, bool))
    ):
        names = " or ".join(
            {"list": "a list", "bool": "true/false", "str": "text"}.get(t.__name__, "a number")
            for t in expected
        )
        problems.append(f"{where}.{op}: must be {names}")
        return None
    if op == "prefix" and isinstance(arg, list) and not all(isinstance(a, str) for a in arg):
        problems.append(f"{where}.prefix: must be text or a list of text")
        return None
    if op == "equals":
        # bool is an int in Python: keep `true` from equalling 1.
        arg_is_bool = type(arg) is bool
        return lambda v: v == arg and (type(v) is bool) == arg_is_bool
    if op == "in":
        try:
            bools = frozenset(a for a in arg if type(a) is bool)
            others = frozenset(_hashable(a) for a in arg if type(a) is not bool)
        except TypeError:
            problems.append(f"{where}.in: members must be plain values")
            return None

        def member(v: Any) -> bool:
            if type(v) is bool:
                return v in bools
            try:
                return _hashable(v) in others
            except TypeError:  # a dict, or a list holding one
                return False

        return member
    if op == "exists":
        return (lambda v: v is not None) if arg else (lambda v: v is None)
    if op == "prefix":
        prefixes = (arg,) if isinstance(arg, str) else tuple(arg)
        return lambda v: isinstance(v, str) and v.startswith(prefixes)
    if op == "regex":
        return _regex_test(arg, f"{where}.regex", problems)
    bound = float(arg)
    compare: Callable[[float], bool] = {
        "gt": lambda n: n > bound,
        "gte": lambda n: n >= bound,
        "lt": lambda n: n < bound,
        "lte": lambda n: n <= bound,
    }[op]

    def numeric(v: Any) -> bool:
        n = _number(v)
        return n is not None and compare(n)

    return numeric


def _re2_options() -> re2.Options:
    options = re2.Options()
    # RE2 would print parse errors to stderr; they are reported as problems instead.
    options.log_errors = False
    # Only "does it match" is asked: without capture groups RE2 does less per match.
    options.never_capture = True
    return options


def _regex_test(pattern: str, where: str, problems: list[str]) -> Callable[[Any], bool] | None:
    """A linear-time ``search`` of ``pattern``, or None with the problem appended."""
    try:
        search = re2.compile(pattern, _re2_options()).search
    except re2.error as exc:
        problems.append(f"{where}: {_regex_problem(pattern, exc)}")
        return None

    def test(v: Any) -> bool:
        # UTF-8 bytes take the wrapper's short path (no character offsets to map
        # back); "surrogatepass" keeps a stray surrogate from raising on the poll thread.
        return isinstance(v, str) and search(v.encode("utf-8", "surrogatepass")) is not None

    return test


def _regex_problem(pattern: str, exc: re2.error) -> str:
    # The C++ layer raises with a bytes message, the Python wrapper with text.
    detail = exc.args[0] if exc.args else ""
    reason = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    # Python's parser tells a pattern RE2 cannot run apart from one that is simply
    # wrong; it only compiles, never matches, so it cannot blow up here.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FutureWarning on "[[" in a set
            re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as py_exc:
        return f"invalid regular expression: {py_exc}"
    hint = "; RE2 writes the end of the text as \\z" if "\\Z" in reason else ""
    return (
        "not supported by RE2, the linear-time regex engine (no backreferences, lookahead, "
        f"lookbehind, atomic groups, possessive quantifiers or repeat counts over 1000): {reason}"
        f"{hint}"
    )


def _field_rule(rule: Mapping[str, Any], where: str, problems: list[str]) -> Predicate | None:
    try:
        get: Getter = compile_path(rule["field"])
    except PathError as exc:
        problems.append(f"{where}.field: {exc}")
        return None
    unknown = sorted(set(rule) - {"field", *_FIELD_OPERATORS})
    if unknown:
        close = [difflib.get_close_matches(u, _FIELD_OPERATORS, n=1) for u in unknown]
        hints = "".join(f"; did you mean {c[0]}?" for c in close if c)
        problems.append(f"{where}: unknown operator {unknown}{hints}")
        return None
    ops = [op for op in _FIELD_OPERATORS if op in rule]
    if not ops:
        problems.append(f"{where}: a field rule needs one of {', '.join(_FIELD_OPERATORS)}")
        return None
    tests = [_field_test(op, rule[op], where, problems) for op in ops]
    if any(t is None for t in tests):
        return None
    checks = tuple(t for t in tests if t is not None)
    if len(checks) == 1:
        (check,) = checks
        return lambda record: check(get(record))
    return lambda record: all(c(v) for v in (get(record),) for c in checks)


def compile_rule(rule: Any, where: str, problems: list[str]) -> Predicate | None:
    """Compile ``rule``; append ``where``-prefixed messages to ``problems`` and return
    ``None`` when it is invalid."""
    if not isinstance(rule, Mapping):
        problems.append(f"{where}: a rule is an object such as {{field: PATH, equals: V}}")
        return None
    if any(k in rule for k in ("all", "any")) and not isinstance(
        rule.get("all", rule.get("any")), list
    ):
        problems.append(f"{where}: all/any take a non-empty list of rules")
        return None
    combinators = [k for k in ("all", "any", "not", "field") if k in rule]
    if len(combinators) != 1:
        problems.append(f"{where}: a rule has exactly one of all, any, not, field")
        return None
    kind = combinators[0]
    if kind == "field":
        return _field_rule(rule, where, problems)
    extra = set(rule) - {kind}
    if extra:
        problems.append(f"{where}: {kind!r} cannot be combined with {sorted(extra)}")
        return None
    if kind == "not":
        inner = compile_rule(rule["not"], f"{where}.not", problems)
        return None if inner is None else (lambda record: not inner(record))
    parts = [compile_rule(r, f"{where}.{kind}[{i}]", problems) for i, r in enumerate(rule[kind])]
    if any(p is None for p in parts):
        return None
    preds = tuple(p for p in parts if p is not None)
    if kind == "all":
        return lambda record: all(p(record) for p in preds)
    return lambda record: any(p(record) for p in preds)
