"""The sandbox's brain, without the HTTP: answer a track request, keep the books.

Owns :class:`SandboxState`: one lock around the token registry, the fault injector,
the event store and the request counters, and the order in which a track request is
judged::

    injected fault (drop, HTTP status, TikTok code) → rate limit (40100)
    → token: empty 40104, unknown 40105, expired 40102 (and the token fault)
    → Content-Type / Content-Encoding / JSON object (40000) → pixel permission (40001)
    → batch size (40061) → hashed PII (40062) → event source's rules (40002)
    → schema (40002) → store, dedup → 0

Decoding and schema validation run outside that lock so the counters and the control
endpoints never wait for them. They run one request at a time under a lock of their own:
both hold the GIL throughout (orjson and the compiled schema work on Python objects), so
judging two bodies at once would only interleave them, a switch interval each, over each
other's freshly decoded events, and cost more CPU for no gain. Reading the next body off
its socket goes on meanwhile. The server turns a :class:`Reply` into bytes on a socket.

Every request not accepted (a non-zero code other than 20001, an HTTP fault, a dropped
connection) is noted in the store with its answer and body, for the Test Events page;
an accepted request pays one set lookup for it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from threading import Condition, Lock
from typing import Any

import orjson

from processor.sandbox.faults import Decision, FaultConfig, FaultInjector, coerce_faults
from processor.sandbox.protocol import Code, RequestIds, default_message, envelope, reason_phrase
from processor.sandbox.store import EventStore, Recent, StoredEvent, bump
from processor.sandbox.tokens import Grant, TokenLike, TokenRegistry
from processor.sandbox.validation import check_body, refused_event
from processor.schemas import Validator, tiktok_request_predicate, tiktok_request_validator

log = logging.getLogger("processor.sandbox")

#: Pixel codes are printed in 40001 messages; a hostile one must not be huge.
_MAX_PIXEL_IN_MESSAGE = 64

#: Answers that mean the events were taken; any other answer is noted as a refusal.
_ACCEPTED = frozenset({Code.OK, Code.PARTIAL_OK})


@dataclass(frozen=True, slots=True)
class TrackRequest:
    """What the sandbox needs of one HTTP request to the track endpoint."""

    token: bytes | None
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: ``drop`` means close the connection and send nothing."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False
    code: int | None = None


class _Requests:
    """Request-level counters."""

    __slots__ = (
        "by_code",
        "by_status",
        "by_token",
        "dropped",
        "injected_codes",
        "injected_http",
        "internal_errors",
        "rate_limited",
        "token_faults",
        "total",
    )

    def __init__(self) -> None:
        self.total = 0
        self.dropped = 0
        self.rate_limited = 0
        self.token_faults = 0
        self.internal_errors = 0
        self.by_code: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_token: Counter[str] = Counter()
        self.injected_codes: Counter[str] = Counter()
        self.injected_http: Counter[str] = Counter()


class SandboxState:
    """Tokens, faults, stored events and counters, behind one lock. Thread-safe."""

    def __init__(
        self,
        *,
        tokens: Iterable[TokenLike],
        pixels: Iterable[str] | None = None,
        faults: FaultConfig | str | Mapping[str, Any] | None = None,
        seed: int | None = None,
        max_stored_events: int = 100_000,
        max_dedup_keys: int = 1_000_000,
        dedup_window_s: float = 48 * 3600,
        validator: Validator | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cond = Condition()
        self._judging = Lock()
        self._tokens = TokenRegistry(tokens)
        self._pixels = None if pixels is None else frozenset(pixels)
        self._faults = FaultInjector(coerce_faults(faults), default_seed=seed)
        self._store_args = (max_stored_events, max_dedup_keys, dedup_window_s)
        self._store = self._new_store()
        #: Which store this is (a reset makes a new one): the Test Events page's cursor
        #: holds it, so a cursor from before a reset is not read against the new store.
        self._generation = 0
        self._requests = _Requests()
        self._validate = validator or tiktok_request_validator()
        # The yes/no test is only known to agree with the shipped schema's validator.
        self._is_valid = tiktok_request_predicate() if validator is None else None
        self._ids = RequestIds()
        self._clock = clock
        self._sleep = sleep
        self._started = clock()

    def _new_store(self) -> EventStore:
        documents, keys, window = self._store_args
        return EventStore(max_documents=documents, max_keys=keys, dedup_window_s=window)

    # -- the track endpoint -----------------------------------------------------------

    def track(self, request: TrackRequest) -> Reply:
        """Judge one request to the track endpoint, store what it carries, count it."""
        request_id = self._ids.next()
        with self._cond:
            self._requests.total += 1
            decision = self._faults.decide()
        if decision.delay_s:
            self._sleep(decision.delay_s)
        try:
            reply = self._answer(request, decision, request_id)
        except Exception:
            # A sandbox bug must show up in tests (internal_errors), not as a hung client.
            log.exception("sandbox: internal error answering request %s", request_id)
            with self._cond:
                self._requests.internal_errors += 1
            reply = self._api(Code.SYSTEM_ERROR, request_id)
        with self._cond:
            counts = self._requests
            if reply.drop:
                counts.dropped += 1
            else:
                counts.by_status[str(reply.status)] += 1
                if reply.code is not None:
                    counts.by_code[str(reply.code)] += 1
            if reply.drop or reply.code not in _ACCEPTED:
                self._store.refused(
                    request_id=request_id,
                    now=self._clock(),
                    status=0 if reply.drop else reply.status,
                    code=reply.code,
                    reply=reply.body,
                    body=request.body,
                    dropped=reply.drop,
                )
            self._cond.notify_all()
        log.debug(
            "track request_id=%s status=%s code=%s",
            request_id,
            "dropped" if reply.drop else reply.status,
            reply.code,
        )
        return reply

    def _answer(self, request: TrackRequest, decision: Decision, request_id: str) -> Reply:
        injected = self._injected(decision, request_id)
        if injected is not None:
            return injected
        code, grant = self._authorise(request.token)
        if code is not None or grant is None:
            return self._api(code or Code.TOKEN_INVALID, request_id)
        partial = decision.outcome is not None  # only 20001 gets this far
        with self._judging:  # the decoded body is freed before the next one is made
            return self._accept(request, grant, request_id, partial=partial)

    def _injected(self, decision: Decision, request_id: str) -> Reply | None:
        """The reply an injected fault or the rate limit forces, if any."""
        outcome = decision.outcome
        with self._cond:
            if outcome is not None and outcome.kind == "drop":
                return Reply(drop=True)
            if outcome is not None and outcome.kind == "http":
                self._requests.injected_http[str(outcome.value)] += 1
                return self._http_fault(outcome.value)
            if outcome is not None:
                self._requests.injected_codes[str(outcome.value)] += 1
                # 20001 (partial OK) is an answer, not a failure: the request goes on.
                return (
                    None
                    if outcome.value == Code.PARTIAL_OK
                    else self._api(outcome.value, request_id)
                )
            if decision.rate_limited:
                self._requests.rate_limited += 1
                return self._api(Code.TOO_MANY_REQUESTS, request_id)
        return None

    def _accept(
        self, request: TrackRequest, grant: Grant, request_id: str, *, partial: bool
    ) -> Reply:
        """Judge an authorised request's body; store its events when all are good."""
        body, problem = _decode(request)
        if problem:
            return self._api(Code.INVALID_PARAMS, request_id, problem)
        pixel = body.get("event_source_id")
        if isinstance(pixel, str) and not self._may_use(grant, pixel):
            shown = pixel[:_MAX_PIXEL_IN_MESSAGE]
            return self._api(
                Code.NO_PERMISSION, request_id, f"No permission to operate pixel code: {shown}"
            )
        data = body.get("data")
        test_code = body.get("test_event_code")
        test_code = test_code if isinstance(test_code, str) else None
        if isinstance(data, list):
            with self._cond:
                self._store.received(len(data), test_code)
        rejection = check_body(body, self._validate, self._is_valid) or refused_event(
            data, self._faults.config.reject
        )
        if rejection:
            return self._api(rejection.code, request_id, rejection.message)
        if not isinstance(pixel, str) or not isinstance(data, list):  # the schema rules it out
            return self._api(Code.PARAM_ERROR, request_id)
        source = body.get("event_source")
        with self._cond:
            self._store.add(
                data,
                event_source=source if isinstance(source, str) else "web",
                pixel=pixel,
                test_event_code=test_code,
                request_id=request_id,
                now=self._clock(),
                body=request.body,
            )
        return self._api(Code.PARTIAL_OK if partial else Code.OK, request_id)

    def _authorise(self, token: bytes | None) -> tuple[Code | None, Grant | None]:
        with self._cond:
            code, grant = self._tokens.check(token)
            if grant is not None:
                bump(self._requests.by_token, grant.label)
            if code is None:
                broken = self._faults.authorised()
                if broken is not None:
                    self._tokens.break_all(broken)
                    self._requests.token_faults += 1
                    log.info("sandbox: token fault fired, every token now answers %s", broken)
                    code, grant = self._tokens.check(token)
            return code, grant

    def _may_use(self, grant: Grant, pixel: str) -> bool:
        allowed = grant.pixels if grant.pixels is not None else self._pixels
        return allowed is None or pixel in allowed

    def _api(self, code: int, request_id: str, message: str | None = None) -> Reply:
        """TikTok's way: HTTP 200, the outcome in the body."""
        body = envelope(code, message or default_message(code), request_id)
        return Reply(body=body, code=code, headers=(("X-Tt-Logid", request_id),))

    def _http_fault(self, status: int) -> Reply:
        """An HTTP-level failure from a gateway: plain text, no envelope."""
        headers: tuple[tuple[str, str], ...] = ()
        if status == 429:
            headers = (("Retry-After", str(self._faults.config.retry_after_s)),)
        body = f"{status} {reason_phrase(status)}\n".encode()
        return Reply(status=status, body=body, content_type="text/plain", headers=headers)

    # -- control ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return self._stats_locked()

    def _stats_locked(self) -> dict[str, Any]:
        r = self._requests
        return {
            "uptime_s": round(self._clock() - self._started, 3),
            "requests": {
                "total": r.total,
                "by_code": dict(r.by_code),
                "by_status": dict(r.by_status),
                "by_token": dict(r.by_token),
                "dropped": r.dropped,
                "internal_errors": r.internal_errors,
            },
            **self._store.to_json(),
            "faults": {
                "codes": dict(r.injected_codes),
                "http": dict(r.injected_http),
                "dropped": r.dropped,
                "rate_limited": r.rate_limited,
                "token_faults": r.token_faults,
            },
        }

    def wait_until(self, condition: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Block until ``condition(stats)`` holds (checked after every request) or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self._stats_locked()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def events(self, **filters: Any) -> list[StoredEvent]:
        with self._cond:
            return self._store.find(**filters)

    def recent(self, **filters: Any) -> tuple[int, Recent, dict[str, Any]]:
        """For the Test Events page: the store's generation, what
        :meth:`EventStore.recent` finds with ``filters``, and the store's counts. Cheap
        under the lock: nothing is decoded."""
        with self._cond:
            counts = self._store.to_json()
            counts["refused_requests"] = self._store.refused_requests
            return self._generation, self._store.recent(**filters), counts

    def reset(self) -> None:
        """Forget stored events, dedup keys and every counter; keep tokens and faults."""
        with self._cond:
            self._store = self._new_store()
            self._generation += 1
            self._requests = _Requests()
            self._started = self._clock()
        log.info("sandbox: reset")

    def faults(self) -> dict[str, Any]:
        with self._cond:
            config = self._faults.config
            return {"faults": config.to_json(), "spec": config.to_spec(), **self._faults.state()}

    def set_faults(self, faults: FaultConfig | str | Mapping[str, Any] | None) -> FaultConfig:
        config = coerce_faults(faults)
        with self._cond:
            self._faults.configure(config)
        log.info("sandbox: faults set to %r", config.to_spec() or "none")
        return config

    def tokens(self) -> list[dict[str, Any]]:
        with self._cond:
            return self._tokens.to_json()

    def set_tokens(self, tokens: Iterable[TokenLike], *, merge: bool = False) -> list[str]:
        tokens = list(tokens)
        with self._cond:
            labels = self._tokens.replace(tokens, merge=merge)
        log.info("sandbox: tokens %s: %s", "merged" if merge else "replaced", ", ".join(labels))
        return labels


def _decode(request: TrackRequest) -> tuple[dict[str, Any], str | None]:
    """The body as a JSON object, or TikTok's 40000 reason why not."""
    media_type = (request.content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return {}, "Content-Type must be application/json"
    if request.content_encoding and request.content_encoding.strip().lower() != "identity":
        # TikTok's support for compressed bodies is unconfirmed: don't let a client rely on it.
        return {}, "Content-Encoding is not supported; send the body uncompressed"
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return {}, "Request body is not valid JSON"
    if not isinstance(body, dict):
        return {}, "Request body must be a JSON object"
    return body, None
