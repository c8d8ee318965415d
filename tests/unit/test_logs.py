"""Log lines: every line is one valid JSON object, whatever its fields hold."""

from __future__ import annotations

import json
import logging

import pytest

from processor.logs import JsonFormatter
from processor.types import Stage
from tests.unit.test_loop import TP0, harness, page_views


def test_the_stop_summary_is_valid_json_after_an_api_rejection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness(max_batch_events=2)
    h.publish(0, page_views(0, 2))
    h.turn(2)
    (batch,) = h.sender.submitted
    h.sender.accept(batch, reject=lambda item: "40002 bad" if item.ref.offset == 1 else None)
    h.turn(3)
    assert h.source.committed[TP0] == 2
    with caplog.at_level(logging.INFO, logger="processor.loop"):
        assert h.processor.shutdown() == 0
    (stopped,) = [r for r in caplog.records if r.getMessage().startswith("stopped:")]
    line = json.loads(JsonFormatter().format(stopped))
    assert line["rejected"] == {"api": 1}
    assert line["events_accepted"] == 1
    assert line["message"].startswith("stopped: 2 records")


def test_a_field_json_cannot_encode_keeps_the_line() -> None:
    record = logging.makeLogRecord(
        {
            "msg": "summary %s",
            "args": ("x",),
            "levelname": "INFO",
            "name": "t",
            "huge": 2**70,
            "by_stage": {Stage.API: 1, ("a", 1): 2},
        }
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "summary x"
    assert "log_error" in line
    assert line["huge"] == str(2**70)


def test_enum_and_integer_keys_are_written_as_text() -> None:
    record = logging.makeLogRecord(
        {"msg": "m", "levelname": "INFO", "name": "t", "counts": {Stage.API: 1, 3: 4}}
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["counts"] == {"api": 1, "3": 4}
    assert "log_error" not in line
