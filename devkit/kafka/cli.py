"""The command line of the local Kafka: ``python -m devkit.kafka fetch|up|status|down``.

``fetch`` caches the broker jars (``make kafka-fetch``); ``up``, ``status`` and ``down`` start,
report and stop the development broker of devkit.kafka.devbroker (``make kafka-up`` ...).
Every KafkaDevError becomes a one-line ``error: ...`` on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devkit.kafka.devbroker import broker_down, broker_up, running_broker
from devkit.kafka.errors import KafkaDevError
from devkit.kafka.jars import fetch, fetched_libs_dir, kafka_version
from devkit.kafka.ports import port_accepts


def _cmd_fetch(_: argparse.Namespace) -> int:
    if fetched_libs_dir() is None:
        print(
            f"Fetching the Kafka {kafka_version()} jars with Maven (first run only)...", flush=True
        )
    result = fetch()
    state = "fetched" if result.downloaded else "already cached"
    print(
        f"Kafka {result.version} jars {state} in {_display(result.libs_dir)} "
        f"({result.seconds:.1f} s)"
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    if fetched_libs_dir() is None:
        _cmd_fetch(args)
    broker, seconds = broker_up(port=args.port)
    logs = _display(broker.log_file)
    if seconds is None:
        print(
            f"Kafka {broker.version} is already running at {broker.bootstrap} "
            f"(pid {broker.pid}, logs: {logs})"
        )
    else:
        print(f"Kafka {broker.version} up at {broker.bootstrap} in {seconds:.1f} s (logs: {logs})")
        print(
            f"Stop it with `make kafka-down`; point tests at it with "
            f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}"
        )
    return 0


def _cmd_status(_: argparse.Namespace) -> int:
    broker = running_broker()
    if broker is None:
        print("Kafka is not running (start it with `make kafka-up`)")
        return 1
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    answering = "" if port_accepts(port) else " but not accepting connections"
    print(
        f"Kafka {broker.version} running at {broker.bootstrap}{answering} "
        f"(pid {broker.pid}, logs: {_display(broker.log_file)})"
    )
    return 0 if not answering else 1


def _cmd_down(_: argparse.Namespace) -> int:
    started = time.monotonic()
    broker = broker_down()
    if broker is None:
        print("Kafka is not running")
    else:
        print(f"Kafka at {broker.bootstrap} stopped in {time.monotonic() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.kafka",
        description="A local Apache Kafka (KRaft, no Docker) for development and tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "fetch", help="fetch the broker jars with Maven (once; cached)"
    ).set_defaults(handler=_cmd_fetch)
    up = commands.add_parser("up", help="start a broker that keeps running in the background")
    up.add_argument("--port", type=int, help="broker port (default: a free one)")
    up.set_defaults(handler=_cmd_up)
    commands.add_parser("status", help="print the running broker (exit 1 if none)").set_defaults(
        handler=_cmd_status
    )
    commands.add_parser("down", help="stop the broker and delete its data").set_defaults(
        handler=_cmd_down
    )
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KafkaDevError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _display(path: Path) -> str:
    """`path` relative to the working directory when below it: shorter messages."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
