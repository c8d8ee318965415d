"""What the dashboard and the alert rules ask Prometheus for, and what the processor exports.

`metric_names(expr)` finds the metric names a PromQL expression selects: it blanks strings,
label matchers, ranges and the label lists of ``by``/``without``/``on``/``ignoring``/
``group_*``, then keeps identifiers that are not functions, keywords, numbers or Grafana
variables. `exported_names(registry)` lists every sample name a registry exposes, including
those of labelled metrics that have no series yet.
"""

from __future__ import annotations

import re
from typing import Final

from prometheus_client import CollectorRegistry

_KEYWORDS: Final = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
        "bool", "offset", "inf", "nan", "atan2",
    }
)  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+),)?\s*(?P<label>\w+)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        token, before = match.group(0), text[: match.start()]
        if before.endswith(("$", "{")) or (before and (before[-1].isdigit() or before[-1] == ".")):
            continue  # a Grafana variable, or the unit/exponent of a number
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if token.lower() in _KEYWORDS:
            continue
        names.add(token)
    return names


def template_metric_names(query: str) -> set[str]:
    """The metric names of a Grafana template variable query (``label_values(expr, label)``
    or a plain PromQL expression)."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return metric_names(query)
    return metric_names(match.group("expr") or "")


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name `registry` exposes (``_total``, ``_bucket``, ``_sum``, ``_count``…)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = set()
    for family in registry.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names
