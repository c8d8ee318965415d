"""Each preset end to end: `produce-sample --shape X` onto the real broker, the shipped
config/examples/X.yaml run by `tiktok-events run`, and the sandbox accepting exactly the
events the sample should become."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from devkit.kafka import TopicFactory, consume_all, free_port
from processor.sandbox import Sandbox
from tests.conftest import ROOT
from tests.integration.pipeline import TOKEN, ProcessorProcess, wait_for


@pytest.mark.parametrize("shape", ["segment", "snowplow", "ga4"])
def test_a_preset_delivers_every_event_its_sample_should_become(
    shape: str, kafka_bootstrap: str, new_topic: TopicFactory, sandbox: Sandbox, tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    dead_letters = new_topic(partitions=1)
    produced = subprocess.run(
        [sys.executable, "-m", "processor", "produce-sample", "--bootstrap", kafka_bootstrap,
         "--shape", shape, "--topics", topic, "--count", "400", "--seed", "3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    expected = Counter(json.loads(produced.stdout)["expected_events"])
    assert len(expected) >= 4, expected

    raw = yaml.safe_load((ROOT / "config" / "examples" / f"{shape}.yaml").read_text())
    raw["kafka"].update(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"presets-{topic}",
        dead_letter_topic=dead_letters,
    )
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    raw["tiktok"] = {
        "pixel_code": raw["tiktok"]["pixel_code"],
        "endpoint": sandbox.endpoint,
        "access_token_file": str(token_file),
    }
    raw["delivery"] = {"linger_ms": 50, "max_requests_per_s": 2000}
    (mapping,) = raw["mappings"]
    mapping["topic"] = topic
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))

    process = ProcessorProcess(config, tmp_path / "run.log", metrics_port=free_port())
    try:
        accepted = lambda: Counter(sandbox.stats()["events"]["by_event"])  # noqa: E731
        wait_for(lambda: accepted() == expected, 90, f"{shape}: delivery of {dict(expected)}")
        process.terminate()
        assert process.wait(30) == 0, process.log()
    finally:
        process.close()
    assert consume_all(kafka_bootstrap, dead_letters) == []  # every record mapped or filtered
