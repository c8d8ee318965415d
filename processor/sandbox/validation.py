"""How the sandbox judges a decoded track request body, in TikTok's order of checks.

Owns the body checks that come after the token and pixel: batch size (40061), hashed
PII (40062), the event source's rules (40002) and the request schema (40002). Pure
functions: no I/O, no clock. The checks run in this order so the most specific code
wins, as TikTok's does: the batch size is read before any event is looked at, and
unhashed PII is reported as 40062 even though the schema would also reject it as 40002.
The source's rules (``lead`` only for crm, ``page`` and ``user.ttp`` only for web, the
app device ids only for app, standard names only offline, custom ones only for crm)
are in the schema too; checked first, they are answered in words rather than as the
schema's "False schema does not allow". One bad event rejects the request.

Every one of those checks is also a rule of the request schema (the batch size is its
``minItems``/``maxItems``, a digest its ``sha256`` pattern, the source rules its
``<source>_event`` definitions), so a body the whole schema accepts passes them all: one
call of the compiled schema's yes/no test answers a good body, and only a body it refuses
is walked check by check, in the order above, for its code and message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from processor.errors import SchemaViolation
from processor.sandbox.protocol import MAX_BATCH_EVENTS, Code
from processor.schemas import MASK, Predicate, Validator, source_rules

#: User fields TikTok wants as SHA-256 of the normalised value.
HASHED_USER_FIELDS = ("email", "phone", "external_id")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Rejection:
    """A TikTok error answer: its code and message."""

    code: int
    message: str


def check_batch_size(data: Any) -> Rejection | None:
    """40061 when ``data`` is a list of 0 or more than 1000 events (other shapes are the
    schema's business)."""
    if isinstance(data, list) and not 1 <= len(data) <= MAX_BATCH_EVENTS:
        return Rejection(
            Code.INVALID_BATCH_SIZE,
            f"Invalid batch size: data must hold 1 to {MAX_BATCH_EVENTS} events, got {len(data)}",
        )
    return None


def find_unhashed(data: Any) -> str | None:
    """The path of the first email/phone/external_id string that is not 64 lowercase hex.

    Values of the wrong type are left to the schema (40002): only a string that is not a
    digest means "PII not hashed".
    """
    if not isinstance(data, list):
        return None
    fullmatch = _SHA256_HEX.fullmatch
    for index, event in enumerate(data):
        user = event.get("user") if isinstance(event, dict) else None
        if not isinstance(user, dict):
            continue
        for name in HASHED_USER_FIELDS:
            value = user.get(name)
            if isinstance(value, str):
                if not fullmatch(value):
                    return f"data[{index}].user.{name}"
            elif isinstance(value, list):
                for position, item in enumerate(value):
                    if isinstance(item, str) and not fullmatch(item):
                        return f"data[{index}].user.{name}[{position}]"
    return None


def check_source(body: dict[str, Any]) -> Rejection | None:
    """40002 for the first event carrying a field, or a name, its ``event_source`` does
    not take. A source or events of the wrong shape are left to the schema."""
    source, data = body.get("event_source"), body.get("data")
    rules = source_rules().get(source) if isinstance(source, str) else None
    if rules is None or not isinstance(data, list):
        return None
    for index, event in enumerate(data):
        if not isinstance(event, dict):
            continue
        name = event.get("event")
        problem = rules.event_problem(name) if isinstance(name, str) else None
        if problem is not None:
            return Rejection(Code.PARAM_ERROR, f"Invalid value for data[{index}].event: {problem}")
        for field in rules.forbidden:
            if _carries(event, field):
                return Rejection(
                    Code.PARAM_ERROR,
                    f"Invalid value for data[{index}].{field}: {rules.field_problem(field)}",
                )
    return None


def _carries(event: dict[str, Any], field: str) -> bool:
    """Whether ``event`` has the dotted ``field`` (``user.ttp``), whatever its value."""
    node: Any = event
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def schema_message(violation: SchemaViolation) -> str:
    """TikTok's wording (``Invalid value for data[3].event_id: …``) for a schema violation.

    The validator already masks the offending value, so no PII reaches the message.
    """
    detail = violation.message
    if detail.startswith(f"{MASK} is "):
        detail = detail[len(MASK) + 4 :]
    return f"Invalid value for {violation.path or 'request'}: {detail}"


def check_body(
    body: dict[str, Any], validator: Validator, is_valid: Predicate | None = None
) -> Rejection | None:
    """Judge a decoded request object; None means every event may be stored.

    ``is_valid``, when given, must accept exactly what ``validator`` accepts (the same
    schema): a body it accepts is answered None at once.
    """
    if is_valid is not None and is_valid(body):
        return None
    data = body.get("data")
    rejection = check_batch_size(data)
    if rejection:
        return rejection
    unhashed = find_unhashed(data)
    if unhashed:
        return Rejection(
            Code.PII_NOT_HASHED,
            f"PII not hashed: {unhashed} must be the SHA-256 of the normalised value "
            "(64 lowercase hex characters)",
        )
    rejection = check_source(body)
    if rejection:
        return rejection
    try:
        validator(body)
    except SchemaViolation as violation:
        return Rejection(Code.PARAM_ERROR, schema_message(violation))
    return None


def refused_event(data: Any, substrings: tuple[str, ...]) -> Rejection | None:
    """40002 for the first event whose ``event_id`` contains one of ``substrings``: the
    ``reject=`` fault, standing in for an event TikTok refuses while taking the others."""
    if not substrings or not isinstance(data, list):
        return None
    for index, event in enumerate(data):
        event_id = event.get("event_id") if isinstance(event, dict) else None
        if isinstance(event_id, str) and any(s in event_id for s in substrings):
            return Rejection(
                Code.PARAM_ERROR,
                f"Invalid value for data[{index}].event_id: refused by the sandbox (reject fault)",
            )
    return None
