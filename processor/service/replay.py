"""``replay-dlq``: the dead-letter topic fed through the current configuration, once,
to its end.

Each dead letter is transformed as its source record (same topic, partition and
offset, so the same event ids, and TikTok deduplicates what was sent before); what
maps is sent to TikTok; what is still rejected stays where it is and is counted.
The replay group's offsets are committed like the processor's, so a second replay
starts where the first stopped.
"""

from __future__ import annotations

import time
from dataclasses import replace

from processor.dlq import header_map
from processor.kafka.api import Record
from processor.ledger import Source
from processor.logs import configure as configure_logging
from processor.metrics import Metrics
from processor.report import RunReport
from processor.service.worker import build_member, install_signals
from processor.transform import load_pipeline


class DeadLetterIdentity:
    """A dead letter's source record, from its headers; None for a source record met
    before in this replay. A record can be dead-lettered more than once (a crash after
    the dead letter was written and before its offset was committed writes it again on
    redelivery): replaying it once re-runs every mapping of the record, so the copies
    are skipped."""

    def __init__(self) -> None:
        self._seen: set[Source] = set()

    def __call__(self, record: Record) -> Source | None:
        headers = header_map(record.headers)
        try:
            source = (
                headers["dlq.source.topic"],
                int(headers["dlq.source.partition"]),
                int(headers["dlq.source.offset"]),
            )
        except (KeyError, ValueError):
            source = (record.topic, record.partition, record.offset)
        if source in self._seen:
            return None
        self._seen.add(source)
        return source


def replay_dead_letters(
    config_path: str, group: str | None, log_format: str, log_level: str
) -> RunReport:
    """Replay the configured dead-letter topic with group ``group`` (default: the
    processor's group id + ``.replay``); the counts of the run."""
    configure_logging(log_format, log_level)
    config, transformer, _ = load_pipeline(config_path, clock=time.time, require_token=True)
    topic = config.kafka.dead_letter_topic
    if not topic:
        raise SystemExit("error: kafka.dead_letter_topic is not configured: nothing to replay")
    replay_group = group or f"{config.kafka.group_id}.replay"
    config = replace(config, kafka=replace(config.kafka, group_id=replay_group))
    member = build_member(
        config, transformer, Metrics(), topics=[topic], replay=True, identify=DeadLetterIdentity()
    )
    install_signals(member.processor)
    member.run()
    return member.processor.report
