"""``tiktok-events sandbox``: run the TikTok-compatible sandbox from the command line.

Owns the sandbox's argument parsing and process life: print one line with the URL once
serving, stop cleanly on SIGINT/SIGTERM (exit 0), exit 2 on a bad argument or fault spec
and 1 when the address cannot be bound, with a one-line reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from processor.collector import collector_for_serving
from processor.errors import ConfigError
from processor.sandbox.faults import FaultConfig
from processor.sandbox.server import Sandbox
from processor.sandbox.tokens import DEFAULT_TOKEN

#: Where the CLI reads its token when no --token is given (keeps it out of `ps`).
TOKEN_ENV = "TIKTOK_SANDBOX_TOKEN"  # noqa: S105 - a variable name, not a token

PROG = "tiktok-events sandbox"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a TikTok Events API 2.0 look-alike "
        "(POST /open_api/v1.3/event/track/) with fault injection, for tests and demos.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one (8080)")
    parser.add_argument(
        "--token",
        action="append",
        metavar="TOKEN",
        help=f"accepted access token, repeatable (default: ${TOKEN_ENV} or {DEFAULT_TOKEN!r}); "
        "prefer the environment variable, arguments are visible to other users",
    )
    parser.add_argument(
        "--pixel",
        action="append",
        metavar="CODE",
        help="pixel code the tokens may use, repeatable (default: any well-formed code)",
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help='faults to inject, e.g. "latency=20ms,code=40100:0.05,http=503:0.02,drop=0.01,'
        'next=50000*2,token_after=100:40102,rps=50,seed=7"',
    )
    parser.add_argument("--seed", type=int, help="seed for the fault dice (unless SPEC has one)")
    parser.add_argument(
        "--max-stored-events",
        type=int,
        default=100_000,
        metavar="N",
        help="keep full documents of the last N events (counts stay exact) (100000)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug logs every request (never its headers or body)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tokens = args.token or [os.environ.get(TOKEN_ENV) or DEFAULT_TOKEN]
    try:
        faults = FaultConfig.from_spec(args.faults)
        if args.max_stored_events < 0:
            raise ConfigError(["--max-stored-events must be 0 or more"])
        sandbox = Sandbox(
            args.host,
            args.port,
            tokens=tokens,
            pixels=args.pixel,
            faults=faults,
            seed=args.seed,
            max_stored_events=args.max_stored_events,
        )
    except ConfigError as exc:
        print(f"{PROG}: " + "; ".join(exc.problems), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with collector_for_serving(), sandbox:
            print(f"sandbox listening on {sandbox.url} (track endpoint {sandbox.endpoint})")
            sys.stdout.flush()
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
