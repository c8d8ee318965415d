"""A TikTok-compatible Events API server for development, tests, benchmarks and the demo.

The sandbox answers ``POST /open_api/v1.3/event/track/`` the way TikTok does (same
path, ``Access-Token`` header, ``{code, message, request_id, data}`` envelope, errors as
HTTP 200 with a non-zero code, one bad event failing the whole request), stores the
events it accepts with TikTok's deduplication, counts everything exactly, and injects
faults on demand. It never keeps an access token: only a digest and a label.

Layout (arrows point one way)::

    cli ─► server (HTTP, Sandbox) ─► state (order of checks, books)
                                       ├─► tokens      registry of token digests and labels
                                       ├─► faults      FaultConfig, spec parsing, the dice
                                       ├─► validation  batch size, hashed PII, schema
                                       ├─► store       dedup, documents, exact counts
                                       └─► protocol    path, codes, envelope, request ids
    server ─► page (the Test Events page and its feed) ─► state, store
"""

from __future__ import annotations

from processor.sandbox.cli import main
from processor.sandbox.faults import FaultConfig, Outcome
from processor.sandbox.protocol import MAX_BATCH_EVENTS, TRACK_PATH, Code
from processor.sandbox.server import Sandbox
from processor.sandbox.tokens import DEFAULT_TOKEN, Token

__all__ = [
    "DEFAULT_TOKEN",
    "MAX_BATCH_EVENTS",
    "TRACK_PATH",
    "Code",
    "FaultConfig",
    "Outcome",
    "Sandbox",
    "Token",
    "main",
]
