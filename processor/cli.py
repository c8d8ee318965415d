"""The ``tiktok-events`` command line.

Parses arguments, loads configuration and hands over to the module that owns
each job. Exit status: 0 on success, 1 on a configuration or fatal error (with
a one-line reason on stderr, or the full list of configuration problems), 2 on
bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

import orjson
import yaml

from processor import __version__
from processor.config import Config, MappingConfig, one_line
from processor.errors import ConfigError, KafkaClientError, ProcessorError
from processor.mapping.values import describe
from processor.matchkeys import MatchSummary, key_names
from processor.preview import preview
from processor.sample import DEFAULT_TOPICS, SHAPES, SampleRecord, generate
from processor.transform import Transformer, load_pipeline

EXIT_OK = 0
EXIT_ERROR = 1


def _parse_now(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time or epoch seconds: {text!r}"
        ) from None
    return moment.timestamp()


def _load(path: str, *, now: float | None = None) -> tuple[Config, Transformer, tuple[str, ...]]:
    clock = (lambda: now) if now is not None else time.time
    try:
        return load_pipeline(path, clock=clock)
    except ProcessorError:
        raise
    except Exception as exc:
        # Last resort: whatever a file makes loading do, the answer is one line, not a
        # traceback (every cause found is already a ConfigError; this one is a bug).
        reason = f"{type(exc).__name__}: {exc}"
        raise ConfigError(
            [f"{path}: cannot be loaded ({reason}); a bug in the processor, please report it"]
        ) from exc


def _print_summary(config: Config, transformer: Transformer, out: TextIO) -> None:
    k, t = config.kafka, config.tiktok
    print(f"{config.source}: OK", file=out)
    dlq = k.dead_letter_topic or "(none: records that cannot be sent stop the processor)"
    print(f"kafka: {k.bootstrap_servers}  group {k.group_id} ({k.group_protocol})", file=out)
    print(f"  dead letters → {dlq}", file=out)
    print(f"tiktok: {t.endpoint}", file=out)
    print(f"  pixel {t.pixel_code}, token from {t.access_token.source()}", file=out)
    for tenant in t.pixels:
        source = tenant.access_token.source()
        print(f"  pixel {tenant.name} ({tenant.event_source_id}): token from {source}", file=out)
    if t.test_event_code:
        print(f"  test event code {t.test_event_code} (TikTok does not keep test events)", file=out)
    for topic in transformer.topics:
        plan = transformer.plan(topic)
        if plan is None:
            continue
        schema = plan.mappings[0].source.schema_name or "no input schema"
        print(f"topic {topic}  ({schema})", file=out)
        for m in plan.mappings:
            when = "every record" if m.source.when is None else _describe_rule(m.source.when)
            hashed = ", ".join(m.hashed_fields) or "nothing"
            test = f", test code {m.test_event_code}" if m.test_event_code else ""
            source = f"{m.event_source} {m.event_source_id}"
            print(f"  {m.name} → {m.event_name}  {source}{test}", file=out)
            print(f"    when {when}", file=out)
            print(f"    hashed (SHA-256): {hashed}", file=out)
    _print_presets(config, out)


def _print_presets(config: Config, out: TextIO) -> None:
    """What each mapping that names a preset expanded to, as the YAML one would write
    without the preset (a starting point for a mapping of one's own)."""
    by_line: dict[int, list[MappingConfig]] = {}
    for m in config.mappings:
        if m.preset is not None:
            by_line.setdefault(m.index, []).append(m)
    for index, expanded in by_line.items():
        print(f"mappings[{index}]: preset {expanded[0].preset} expands to", file=out)
        text = yaml.safe_dump(
            [_written(m) for m in expanded], sort_keys=False, allow_unicode=True, width=100
        )
        out.write("".join(f"  {line}\n" for line in text.splitlines()))


def _written(m: MappingConfig) -> dict[str, object]:
    written: dict[str, object] = {"name": m.name, "topic": m.topic}
    optional = {
        "schema": m.schema_name,
        "for_each": m.for_each,
        "when": m.when,
        "event": m.event,
        "event_id": m.event_id,
        "event_source": None if m.event_source == "web" else m.event_source,
        "event_source_id": m.event_source_id,
        "test_event_code": m.test_event_code,
        "limited_data_use": m.limited_data_use,
    }
    written.update({k: v for k, v in optional.items() if v is not None})
    if m.on_invalid_identifier != "drop":
        written["on_invalid_identifier"] = m.on_invalid_identifier
    written["fields"] = dict(m.fields)
    return written


def _describe_rule(rule: object) -> str:
    if not isinstance(rule, dict):
        return "?"
    if "all" in rule:
        return "(" + " and ".join(_describe_rule(r) for r in rule["all"]) + ")"
    if "any" in rule:
        return "(" + " or ".join(_describe_rule(r) for r in rule["any"]) + ")"
    if "not" in rule:
        return "not " + _describe_rule(rule["not"])
    parts = [f"{op} {rule[op]!r}" for op in rule if op != "field"]
    return f"{describe(rule.get('field'))} " + " and ".join(parts)


def cmd_check_config(args: argparse.Namespace) -> int:
    config, transformer, warnings = _load(args.config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _print_summary(config, transformer, sys.stdout)
    return EXIT_OK


def _load_for_topic(
    path: str, topic: str, *, now: float | None = None
) -> tuple[Config, Transformer | None]:
    """The configuration and its transformer (None, with the error printed, when no
    mapping reads ``topic``); the warnings printed."""
    config, transformer, warnings = _load(path, now=now)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if topic not in transformer.topics:
        known = ", ".join(transformer.topics)
        print(f"error: no mapping reads topic {topic!r} (mapped topics: {known})", file=sys.stderr)
        return config, None
    return config, transformer


def cmd_preview(args: argparse.Namespace) -> int:
    config, transformer = _load_for_topic(args.config, args.topic, now=args.now)
    if transformer is None:
        return EXIT_ERROR
    data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    summary = MatchSummary()
    for line in preview(transformer, args.topic, data, config.tiktok.partner_name):
        if line.body is not None:
            for event, keys in zip(line.body["data"], line.match_keys, strict=True):
                summary.add(event["event"], keys)
        if args.json:
            sys.stdout.write(orjson.dumps(line.as_json()).decode() + "\n")
            continue
        if line.outcome == "mapped":
            assert line.body is not None  # noqa: S101 - "mapped" lines always carry a body
            events = ", ".join(e["event"] for e in line.body["data"])
            via = ", ".join(line.mappings)
            print(f"line {line.line}: {events} via {via} → POST {config.tiktok.endpoint}")
            for event, keys in zip(line.body["data"], line.match_keys, strict=True):
                print(f"  match keys of {event['event']}: {_key_list(keys)}")
            for field, reason in line.dropped:
                print(f"  dropped: {field} ({reason})")
            print(orjson.dumps(line.body, option=orjson.OPT_INDENT_2).decode())
        elif line.outcome == "filtered":
            print(f"line {line.line}: filtered ({line.reason}: {', '.join(line.mappings)})")
        else:
            via = f" by {line.mappings[0]}" if line.mappings else ""
            print(f"line {line.line}: rejected{via} at {line.stage}: {line.reason}")
    if not args.json:
        _print_match_summary(summary, sys.stdout)
    return EXIT_OK


def cmd_match_report(args: argparse.Namespace) -> int:
    from processor.kafka.sampler import newest_records  # noqa: PLC0415 - see cmd_run

    config, transformer = _load_for_topic(args.config, args.topic)
    if transformer is None:
        return EXIT_ERROR
    try:
        records = newest_records(config.kafka, args.topic, args.count, args.timeout)
    except KafkaClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    summary = MatchSummary()
    filtered = 0
    rejected: Counter[str] = Counter()
    for record in records:
        result = transformer.transform(record.topic, record.partition, record.offset, record.value)
        filtered += result.filtered
        for event in result.events:
            summary.add(event.event, event.match_keys)
        rejected.update(str(r.stage) for r in result.rejected)
    if args.json:
        report = {
            "topic": args.topic,
            "records": len(records),
            "filtered": filtered,
            "rejected": dict(rejected),
            "events": summary.events,
            "match_keys": summary.as_json(),
        }
        print(orjson.dumps(report).decode())
        return EXIT_OK
    stages = ", ".join(f"{stage} {n:,}" for stage, n in rejected.most_common())
    print(
        f"{args.topic}: the newest {len(records):,} records: {summary.events:,} events, "
        f"{filtered:,} filtered, {sum(rejected.values()):,} rejected"
        + (f" ({stages})" if stages else "")
    )
    _print_match_summary(summary, sys.stdout)
    return EXIT_OK


def _key_list(keys: int) -> str:
    return ", ".join(key_names(keys)) or "none (TikTok cannot attribute this event)"


def _print_match_summary(summary: MatchSummary, out: TextIO) -> None:
    if not summary.events:
        print("match keys: no events", file=out)
        return
    events = summary.events
    print(f"match keys over {events:,} event{'s' if events != 1 else ''}:", file=out)
    for line in summary.lines():
        print(f"  {line}", file=out)


def cmd_run(args: argparse.Namespace) -> int:
    from processor.service import supervisor  # noqa: PLC0415 - Kafka and httpx load only for the jobs that use them

    return supervisor.run_workers(
        args.config,
        args.workers,
        args.log_format,
        args.log_level,
        progress_interval_s=args.progress_interval,
    )


def cmd_replay_dlq(args: argparse.Namespace) -> int:
    from processor.service import replay  # noqa: PLC0415 - see cmd_run

    report = replay.replay_dead_letters(args.config, args.group, args.log_format, args.log_level)
    summary = {
        "dead_letters": report.records,
        "filtered": report.filtered,
        "events_delivered": report.events_accepted,
        "still_rejected": report.rejected,
        "duplicates_skipped": report.duplicates,
    }
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print(
            f"replayed {report.records} dead letters: {report.events_accepted} events delivered, "
            f"{report.filtered} filtered, still rejected {report.rejected or 'none'}"
            + (f", {report.duplicates} duplicates skipped" if report.duplicates else "")
        )
    return EXIT_OK


def _sample_topics(shape: str, text: str | None) -> dict[str, str]:
    """The ``--topics`` of ``produce-sample`` for ``shape``: record kind → topic. Raises
    ``argparse.ArgumentTypeError`` with what to give instead."""
    if text is None:
        return {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if shape != "clickstream":
        # A preset's records all go to one topic, as its mapping reads one.
        topics = [p.split("=", 1)[1] if p.startswith(f"{shape}=") else p for p in parts]
        if len(topics) != 1 or "=" in topics[0]:
            raise argparse.ArgumentTypeError(
                f"--shape {shape} writes one topic: give its name (or {shape}=TOPIC)"
            )
        return {shape: topics[0]}
    kinds = list(DEFAULT_TOPICS)
    if all("=" in p for p in parts):
        topics_of = dict(p.split("=", 1) for p in parts)
        unknown = set(topics_of) - set(kinds)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown record kinds {sorted(unknown)}; use {kinds}")
        return topics_of
    if len(parts) != len(kinds):
        raise argparse.ArgumentTypeError(
            f"give {len(kinds)} topics ({', '.join(kinds)}) or kind=topic pairs"
        )
    return dict(zip(kinds, parts, strict=True))


def cmd_produce_sample(args: argparse.Namespace) -> int:
    from processor.kafka import producer  # noqa: PLC0415 - see cmd_run

    try:
        topics_of = _sample_topics(args.shape, args.topics)
    except argparse.ArgumentTypeError as exc:
        args.usage_error(f"argument --topics: {exc}")  # exits 2, as argparse does
    start = args.start if args.start is not None else time.time() - args.count * 0.003
    records, expected = generate(
        args.count, seed=args.seed, start=start, topics=topics_of, shape=args.shape
    )
    topics = sorted({r.topic for r in records})
    began = time.monotonic()
    if args.output is not None:
        acknowledged = _write_sample(Path(args.output), records)
    else:
        producer.ensure_topics(args.bootstrap, topics, args.partitions)
        acknowledged = producer.produce_sample(args.bootstrap, records, rate=args.rate)
    took = time.monotonic() - began
    summary = {
        "produced": acknowledged,
        "shape": args.shape,
        "topics": topics,
        "expected_events": dict(sorted(expected.items())),
        # Records, not events: a GA4 body may become several events, or none.
        "filtered": sum(1 for r in records if not r.expected_events),
        "seconds": round(took, 2),
    }
    where = ", ".join(topics) if args.output is None else f"{args.output}/<topic>.jsonl"
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print(f"produced {acknowledged} records to {where} in {took:.1f}s")
        by = "" if args.shape == "clickstream" else f" (by a mapping with preset: {args.shape})"
        print(
            f"expected TikTok events{by}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(expected.items()))
        )
        print(f"to be filtered out: {summary['filtered']} records")
    return EXIT_OK


def _write_sample(folder: Path, records: Sequence[SampleRecord]) -> int:
    """The records as JSON lines, one file a topic (``FOLDER/<topic>.jsonl``), for
    ``preview``; how many were written."""
    folder.mkdir(parents=True, exist_ok=True)
    by_topic: dict[str, list[bytes]] = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record.value)
    for topic, values in by_topic.items():
        (folder / f"{topic}.jsonl").write_bytes(b"".join(v + b"\n" for v in values))
    return len(records)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, not {text!r}")
    return value


def _logging_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="log lines (default json)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiktok-events",
        description="Kafka clickstream → TikTok Events API processor.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate a configuration and summarise it")
    check.add_argument("config", help="the YAML configuration file")
    check.set_defaults(func=cmd_check_config)

    prev = sub.add_parser(
        "preview", help="show the request body each record would become (offline)"
    )
    prev.add_argument("--config", required=True, help="the YAML configuration file")
    prev.add_argument("--topic", required=True, help="the topic the records come from")
    prev.add_argument(
        "input", nargs="?", default="-", help="JSON lines or one JSON document; - for stdin"
    )
    prev.add_argument("--json", action="store_true", help="one JSON object per outcome")
    prev.add_argument(
        "--now",
        type=_parse_now,
        default=None,
        help="the time to judge event age against (ISO-8601 or epoch seconds; default: now)",
    )
    prev.set_defaults(func=cmd_preview)

    run = sub.add_parser("run", help="run the processor: consume, map, deliver, commit")
    run.add_argument("--config", required=True, help="the YAML configuration file")
    run.add_argument(
        "--workers", type=_positive, default=1, help="processes in the consumer group (default 1)"
    )
    _logging_args(run)
    run.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --log-format text, a progress line this often (default 10; 0: none)",
    )
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser(
        "replay-dlq", help="feed the dead-letter topic through the current configuration, once"
    )
    replay.add_argument("--config", required=True, help="the YAML configuration file")
    replay.add_argument("--group", help="consumer group of the replay (default: GROUP.replay)")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    _logging_args(replay)
    replay.set_defaults(func=cmd_replay_dlq)

    sample = sub.add_parser("produce-sample", help="produce realistic sample clickstream to Kafka")
    target = sample.add_mutually_exclusive_group(required=True)
    target.add_argument("--bootstrap", help="Kafka bootstrap servers")
    target.add_argument(
        "--output",
        metavar="FOLDER",
        help="write FOLDER/<topic>.jsonl instead, for preview (no broker)",
    )
    sample.add_argument(
        "--shape",
        choices=SHAPES,
        default=SHAPES[0],
        help="clickstream: the four seed kinds of config/example.yaml (default); segment, "
        "snowplow, ga4: the records of that mapping preset, on one topic",
    )
    sample.add_argument(
        "--topics",
        default=None,
        help="page_view,button_click,sign_up,form_submit topics, or kind=topic pairs "
        "(default: web.pageviews,web.clicks,web.signups,web.forms); with a preset's --shape, "
        "its one topic (default: segment.events, snowplow.enriched, ga4.mp)",
    )
    sample.add_argument("--count", type=_positive, default=1000, help="records (default 1000)")
    sample.add_argument("--rate", type=float, default=0.0, help="records/s (default: unthrottled)")
    sample.add_argument("--seed", type=int, default=1)
    sample.add_argument("--partitions", type=_positive, default=3, help="for topics it creates")
    sample.add_argument(
        "--start", type=_parse_now, default=None, help="time of the first record (default: now)"
    )
    sample.add_argument("--json", action="store_true", help="print the summary as JSON")
    sample.set_defaults(func=cmd_produce_sample, usage_error=sample.error)

    report = sub.add_parser(
        "match-report",
        help="which match keys a live topic's newest records would give TikTok (commits nothing)",
    )
    report.add_argument("--config", required=True, help="the YAML configuration file")
    report.add_argument("--topic", required=True, help="the topic to read")
    report.add_argument(
        "--count", type=_positive, default=1000, help="newest records to read (default 1000)"
    )
    report.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to read them in (default 30)"
    )
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.set_defaults(func=cmd_match_report)

    # Listed for --help; main() hands `sandbox …` to the sandbox's own parser.
    sub.add_parser("sandbox", help="run the TikTok-compatible sandbox server (sandbox --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sandbox"]:
        # The sandbox parses its own options; argparse.REMAINDER would drop the ones
        # that come first (bpo-17050), so they are handed over untouched.
        from processor import sandbox  # noqa: PLC0415 - the dev server is not loaded by other commands

        return sandbox.main(arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        # One line per problem, whatever the file held (keys with line breaks, …).
        lines = [f"  {one_line(problem)}" for problem in exc.problems]
        print("error: invalid configuration:", *lines, sep="\n", file=sys.stderr)
        return EXIT_ERROR
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: file not found", file=sys.stderr)
        return EXIT_ERROR
    return code
