"""Fault injection for the sandbox: the configuration, its two spellings, and the dice.

Owns :class:`FaultConfig` (a frozen value, validated when built, every problem reported
at once as :class:`~processor.errors.ConfigError`), its compact spec (``--faults``) and
JSON (``/sandbox/faults``) forms, and :class:`FaultInjector`, which decides request by
request what goes wrong. With a seed the decisions are a pure function of the request
order, so a single client sees the same faults on every run.

Spec grammar (items separated by commas, each at most once unless marked repeatable)::

    latency=20ms           fixed delay before every answer (ms, s, or a bare number = ms)
    jitter=10ms            plus a uniform random delay in [0, jitter]
    code=40100:0.05        answer TikTok code 40100 to 5% of requests (repeatable; 5% works)
    http=503:0.02          answer HTTP 503 to 2% of requests (408, 429, 500, 502, 503, 504)
    drop=0.01              close the connection without an answer for 1% of requests
    next=40100*3           fail the next 3 requests with 40100 (repeatable, queued in order;
                           also next=http503*2, next=drop; *N defaults to 1)
    token_after=100:40102  after 100 authorised requests the tokens stop working: 40105
                           (revoked, the default) or 40102 (expired) until tokens are changed
    rps=50                 requests-per-second limit (token bucket) answering 40100
    burst=10               the bucket's size (default: rps, at least 1)
    retry_after=2          seconds sent in ``Retry-After`` with HTTP 429 (default 1)
    reject=bad-            refuse any request holding an event whose event_id contains
                           "bad-" with 40002 naming that event, as TikTok refuses an event
                           it cannot take (repeatable; deterministic, for bisection tests)
    seed=7                 makes every random choice repeatable

The rates of ``code``, ``http`` and ``drop`` share one draw per request, so they must add
up to at most 1 and each is exactly the fraction of requests it describes.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from processor.errors import ConfigError
from processor.sandbox.protocol import Code, is_known_code

#: HTTP statuses the sandbox can inject (what a gateway in front of TikTok may answer).
HTTP_FAULT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

#: What a token fault can turn the tokens into.
TOKEN_FAULT_CODES = frozenset({Code.TOKEN_EXPIRED, Code.TOKEN_INVALID})

MAX_LATENCY_MS = 60_000.0
MAX_COUNT = 1_000_000
MAX_RPS = 1_000_000.0
MAX_RETRY_AFTER_S = 3600

OutcomeKind = Literal["code", "http", "drop"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One way a request can go wrong: a TikTok ``code``, an ``http`` status, or a ``drop``."""

    kind: OutcomeKind
    value: int = 0

    def __str__(self) -> str:
        if self.kind == "drop":
            return "drop"
        return f"http{self.value}" if self.kind == "http" else str(self.value)

    @classmethod
    def parse(cls, text: str) -> Outcome:
        """``40100`` → a code, ``http503`` → an HTTP status, ``drop`` → a dropped connection."""
        text = text.strip().lower()
        if text == "drop":
            return cls("drop")
        if text.startswith("http") and text[4:].isdigit():
            return cls("http", int(text[4:]))
        if text.isdigit():
            return cls("code", int(text))
        raise ValueError(f"{text!r} is not an outcome (a TikTok code, httpNNN or drop)")

    def problem(self) -> str | None:
        """Why this outcome cannot be injected, or None."""
        if self.kind == "code" and (not is_known_code(self.value) or self.value == Code.OK):
            return f"code {self.value} is not a TikTok error code the sandbox knows"
        if self.kind == "http" and self.value not in HTTP_FAULT_STATUSES:
            allowed = ", ".join(map(str, sorted(HTTP_FAULT_STATUSES)))
            return f"HTTP status {self.value} cannot be injected (allowed: {allowed})"
        return None


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What the sandbox does wrong on purpose. The default does nothing wrong."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    codes: tuple[tuple[int, float], ...] = ()
    http: tuple[tuple[int, float], ...] = ()
    drop: float = 0.0
    next: tuple[tuple[Outcome, int], ...] = ()
    token_after: int | None = None
    token_code: int = Code.TOKEN_INVALID
    rps: float | None = None
    burst: int | None = None
    retry_after_s: int = 1
    seed: int | None = None
    reject: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError([f"faults: {p}" for p in problems])

    def _problems(self) -> list[str]:
        return [*self._rate_problems(), *self._queue_problems(), *self._limit_problems()]

    def _rate_problems(self) -> list[str]:
        problems: list[str] = []
        entries: list[tuple[OutcomeKind, tuple[tuple[int, float], ...]]] = [
            ("code", self.codes),
            ("http", self.http),
        ]
        for kind, pairs in entries:
            seen: set[int] = set()
            for value, rate in pairs:
                problems += filter(None, [Outcome(kind, value).problem()])
                if value in seen:
                    problems.append(f"{kind} {value} is given twice")
                seen.add(value)
                if not 0 <= rate <= 1:
                    problems.append(f"{kind} {value}: rate must be between 0 and 1, got {rate:g}")
        if not 0 <= self.drop <= 1:
            problems.append(f"drop: rate must be between 0 and 1, got {self.drop:g}")
        if self.total_rate > 1 + 1e-9:
            problems.append(f"code, http and drop rates add up to {self.total_rate:g}, more than 1")
        return problems

    def _queue_problems(self) -> list[str]:
        problems: list[str] = []
        for outcome, count in self.next:
            problems += (f"next: {p}" for p in filter(None, [outcome.problem()]))
            if not 1 <= count <= MAX_COUNT:
                problems.append(f"next {outcome}: count must be 1..{MAX_COUNT}, got {count}")
        if self.token_after is not None and not 0 <= self.token_after <= MAX_COUNT * 1000:
            problems.append(f"token_after must be 0 or more requests, got {self.token_after}")
        if self.token_code not in TOKEN_FAULT_CODES:
            problems.append(f"token code must be 40102 or 40105, got {self.token_code}")
        return problems

    def _limit_problems(self) -> list[str]:
        problems: list[str] = []
        for name, ms in (("latency", self.latency_ms), ("jitter", self.jitter_ms)):
            if not 0 <= ms <= MAX_LATENCY_MS:
                problems.append(f"{name} must be between 0 and {MAX_LATENCY_MS:g} ms, got {ms:g}")
        if self.rps is not None and not 0 < self.rps <= MAX_RPS:
            problems.append(f"rps must be above 0 and at most {MAX_RPS:g}, got {self.rps:g}")
        if self.burst is not None and not 1 <= self.burst <= MAX_COUNT:
            problems.append(f"burst must be 1..{MAX_COUNT}, got {self.burst}")
        if not 0 <= self.retry_after_s <= MAX_RETRY_AFTER_S:
            problems.append(f"retry_after must be 0..{MAX_RETRY_AFTER_S} s")
        return problems

    @property
    def total_rate(self) -> float:
        return sum(r for _, r in self.codes) + sum(r for _, r in self.http) + self.drop

    @property
    def bucket_size(self) -> float:
        """Requests the rate limiter lets through at once."""
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, self.rps or 1.0)

    # -- the compact spec -------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: str) -> FaultConfig:
        """Parse the ``--faults`` spec (grammar in the module docstring); '' means no faults."""
        fields: dict[str, Any] = {}
        problems: list[str] = []
        codes: list[tuple[int, float]] = []
        http: list[tuple[int, float]] = []
        queue: list[tuple[Outcome, int]] = []
        reject: list[str] = []
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            value = value.strip()
            try:
                if not sep or not value:
                    raise ValueError("expected key=value")
                if key in ("code", "http"):
                    target, rate = _split_pair(value)
                    (codes if key == "code" else http).append((_int(target), _rate(rate)))
                elif key == "next":
                    queue.append(_counted_outcome(value))
                elif key == "reject":
                    reject.append(value)
                elif key in _SCALARS:
                    name, convert = _SCALARS[key]
                    if name in fields:
                        raise ValueError("given twice")
                    if key == "token_after" and ":" in value:
                        count, code = _split_pair(value)
                        fields["token_code"] = _int(code)
                        value = count
                    fields[name] = convert(value)
                else:
                    raise ValueError(f"unknown fault (known: {', '.join(_KEYS)})")
            except ValueError as exc:
                problems.append(f"faults: {item!r}: {exc}")
        return _build(
            problems,
            **fields,
            codes=tuple(codes),
            http=tuple(http),
            next=tuple(queue),
            reject=tuple(reject),
        )

    def to_spec(self) -> str:
        """The compact spec that parses back to this configuration."""
        items: list[str] = []
        if self.latency_ms:
            items.append(f"latency={self.latency_ms:g}ms")
        if self.jitter_ms:
            items.append(f"jitter={self.jitter_ms:g}ms")
        items += [f"code={c}:{r:g}" for c, r in self.codes]
        items += [f"http={s}:{r:g}" for s, r in self.http]
        if self.drop:
            items.append(f"drop={self.drop:g}")
        items += [f"next={o}*{n}" for o, n in self.next]
        if self.token_after is not None:
            items.append(f"token_after={self.token_after}:{self.token_code}")
        if self.rps is not None:
            items.append(f"rps={self.rps:g}")
        if self.burst is not None:
            items.append(f"burst={self.burst}")
        if self.retry_after_s != 1:
            items.append(f"retry_after={self.retry_after_s}")
        if self.seed is not None:
            items.append(f"seed={self.seed}")
        items += [f"reject={r}" for r in self.reject]
        return ",".join(items)

    # -- the JSON form ----------------------------------------------------------------

    @classmethod
    def from_json(cls, doc: Any) -> FaultConfig:
        """Build from ``/sandbox/faults`` JSON: ``{"spec": "..."}`` or the object :meth:`to_json`
        gives (any subset of its keys)."""
        if not isinstance(doc, Mapping):
            raise ConfigError(["faults: expected a JSON object"])
        if "spec" in doc:
            if set(doc) != {"spec"} or not isinstance(doc["spec"], str):
                raise ConfigError(['faults: "spec" must be a string and come alone'])
            return cls.from_spec(doc["spec"])
        problems: list[str] = []
        fields: dict[str, Any] = {}
        for key, value in doc.items():
            try:
                fields.update(_json_field(key, value))
            except (ValueError, TypeError) as exc:
                problems.append(f"faults: {key}: {exc}")
        return _build(problems, **fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "codes": {str(c): r for c, r in self.codes},
            "http": {str(s): r for s, r in self.http},
            "drop": self.drop,
            "next": [f"{o}*{n}" for o, n in self.next],
            "token_after": self.token_after,
            "token_code": self.token_code,
            "rps": self.rps,
            "burst": self.burst,
            "retry_after_s": self.retry_after_s,
            "seed": self.seed,
            "reject": list(self.reject),
        }


def _build(problems: list[str], **fields: Any) -> FaultConfig:
    """Build a config from what parsed, reporting parse and value problems together."""
    try:
        config = FaultConfig(**fields)
    except ConfigError as exc:
        problems = [*problems, *exc.problems]
    if problems:
        raise ConfigError(problems)
    return config


def coerce_faults(faults: FaultConfig | str | Mapping[str, Any] | None) -> FaultConfig:
    """Accept a config, a spec string, its JSON object, or None (no faults)."""
    if faults is None:
        return FaultConfig()
    if isinstance(faults, FaultConfig):
        return faults
    if isinstance(faults, str):
        return FaultConfig.from_spec(faults)
    return FaultConfig.from_json(faults)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s)?$")


def _duration_ms(text: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 20ms or 1.5s")
    number = float(match.group(1))
    return number * 1000 if match.group(2) == "s" else number


def _rate(text: str) -> float:
    text = text.strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a rate like 0.05 or 5%") from None


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _split_pair(text: str) -> tuple[str, str]:
    left, sep, right = text.partition(":")
    if not sep:
        raise ValueError(f"expected VALUE:RATE, got {text!r}")
    return left, right


def _counted_outcome(text: str) -> tuple[Outcome, int]:
    outcome, _, count = text.partition("*")
    return Outcome.parse(outcome), _int(count) if count else 1


_SCALARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "latency": ("latency_ms", _duration_ms),
    "jitter": ("jitter_ms", _duration_ms),
    "drop": ("drop", _rate),
    "token_after": ("token_after", _int),
    "token_code": ("token_code", _int),
    "rps": ("rps", _float),
    "burst": ("burst", _int),
    "retry_after": ("retry_after_s", _int),
    "seed": ("seed", _int),
}
_KEYS = ("code", "http", "next", "reject", *_SCALARS)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("must be a number")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("must be an integer")
    return value


def _json_field(key: str, value: Any) -> dict[str, Any]:
    """One key of the JSON form → dataclass field(s)."""
    if key in ("codes", "http"):
        if not isinstance(value, Mapping):
            raise TypeError('must be an object like {"40100": 0.05}')
        return {key: tuple((_int(str(k)), _number(r)) for k, r in value.items())}
    if key == "next":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError('must be a list like ["40100*3", "http503", "drop"]')
        return {"next": tuple(_counted_outcome(v) for v in value)}
    if key in ("latency_ms", "jitter_ms", "drop"):
        return {key: _number(value)}
    if key in ("rps",):
        return {key: None if value is None else _number(value)}
    if key in ("token_after", "burst", "seed"):
        return {key: None if value is None else _integer(value)}
    if key in ("token_code", "retry_after_s"):
        return {key: _integer(value)}
    if key == "reject":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise TypeError('must be a list of event_id substrings like ["bad-"]')
        return {"reject": tuple(value)}
    raise ValueError("unknown key")


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request before the sandbox looks at it."""

    delay_s: float = 0.0
    outcome: Outcome | None = None
    rate_limited: bool = False


@dataclass(slots=True)
class _Bucket:
    size: float
    rate: float
    level: float
    at: float

    def take(self, now: float) -> bool:
        self.level = min(self.size, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return True
        return False


@dataclass(slots=True)
class FaultInjector:
    """Applies a :class:`FaultConfig`. Not thread-safe: the sandbox calls it under its lock."""

    config: FaultConfig
    default_seed: int | None = None
    clock: Callable[[], float] = time.monotonic
    _rng: random.Random = field(init=False)
    _queue: deque[list[Any]] = field(init=False)
    _bucket: _Bucket | None = field(init=False)
    _authorised: int = field(init=False, default=0)
    _token_fired: bool = field(init=False, default=False)
    _table: tuple[tuple[float, Outcome], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.configure(self.config)

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration and start its state afresh (re-seeded, queue refilled)."""
        self.config = config
        seed = config.seed if config.seed is not None else self.default_seed
        # Not for security: fault dice only need to be repeatable with a seed.
        self._rng = random.Random(seed)  # noqa: S311
        self._queue = deque([outcome, count] for outcome, count in config.next)
        self._bucket = None
        if config.rps is not None:
            size = config.bucket_size
            self._bucket = _Bucket(size=size, rate=config.rps, level=size, at=self.clock())
        self._authorised = 0
        self._token_fired = False
        cumulative = 0.0
        table: list[tuple[float, Outcome]] = []
        for value, rate in config.codes:
            cumulative += rate
            table.append((cumulative, Outcome("code", value)))
        for value, rate in config.http:
            cumulative += rate
            table.append((cumulative, Outcome("http", value)))
        if config.drop:
            table.append((cumulative + config.drop, Outcome("drop")))
        self._table = tuple(table)

    def decide(self) -> Decision:
        """Roll the dice for one track request, in arrival order."""
        config = self.config
        delay_ms = config.latency_ms
        if config.jitter_ms:
            delay_ms += self._rng.uniform(0, config.jitter_ms)
        outcome: Outcome | None = None
        if self._queue:
            head = self._queue[0]
            outcome = head[0]
            head[1] -= 1
            if head[1] <= 0:
                self._queue.popleft()
        elif self._table:
            draw = self._rng.random()
            outcome = next((o for bound, o in self._table if draw < bound), None)
        limited = False
        if outcome is None and self._bucket is not None:
            limited = not self._bucket.take(self.clock())
        return Decision(delay_s=delay_ms / 1000, outcome=outcome, rate_limited=limited)

    def authorised(self) -> int | None:
        """Count one request that passed the token check. Returns the code the tokens turn
        into when the token fault fires now, else None."""
        self._authorised += 1
        after = self.config.token_after
        if after is not None and not self._token_fired and self._authorised > after:
            self._token_fired = True
            return self.config.token_code
        return None

    def state(self) -> dict[str, Any]:
        after = self.config.token_after
        return {
            "next_remaining": [f"{o}*{n}" for o, n in self._queue],
            "authorised_requests": self._authorised,
            "token_fault_fired": self._token_fired,
            "token_fault_in": None
            if after is None or self._token_fired
            else max(0, after - self._authorised),
        }
