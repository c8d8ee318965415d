"""Event sources end to end: each source's request against the real sandbox over HTTP,
a CRM lead mapped by config/examples/crm-leads.yaml and sent by the real sender, and the
same CRM lead from a real Kafka topic through ``tiktok-events run``. The sandbox is the
integration suite's (``sandbox`` in conftest.py), accepting the pipeline's token."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from devkit.kafka import TopicFactory, committed_offsets, produce
from processor.batching import Batch, PendingEvent
from processor.config import AccessToken, DeliveryConfig, Secret, TikTokConfig
from processor.metrics import Metrics
from processor.payload import batch_key
from processor.sandbox import TRACK_PATH, Sandbox
from processor.sink import Sender
from processor.transform import Transformer, load_pipeline
from tests.conftest import ROOT, SCHEMAS
from tests.integration.pipeline import (
    TOKEN,
    MakePipeline,
    ProcessorProcess,
    dead_letters,
    wait_for,
)
from tests.unit.sinkkit import outcomes

CRM_EXAMPLE = ROOT / "config" / "examples" / "crm-leads.yaml"
CRM_SET = "7312345678901234567"
PIXEL = "D34FV3JC77U1PDQ72P1G"
SHA = "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
#: One request per source with what only that source takes.
REQUESTS: dict[str, dict[str, Any]] = {
    "web": {
        "event_source_id": PIXEL,
        "event": "ViewContent",
        "user": {"email": SHA, "ttp": "Qm4tZr8LwP2vN6cXy0HbJ3sKdAe"},
        "page": {"url": "https://shop.example.com/p/1"},
        "limited_data_use": False,
    },
    "app": {
        "event_source_id": "7123456789012345678",
        "event": "Purchase",
        "user": {"idfa": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "att_status": "AUTHORIZED"},
        "limited_data_use": True,
    },
    "offline": {
        "event_source_id": "7234567890123456789",
        "event": "Purchase",
        "user": {"phone": SHA},
        "properties": {"shop_id": "store-42", "value": 12.5, "currency": "EUR"},
    },
    "crm": {
        "event_source_id": CRM_SET,
        "event": "QualifiedLead",
        "user": {"email": SHA},
        "lead": {"lead_id": "7300000000000000001", "lead_event_source": "HubSpot"},
    },
}
#: A field (and value) each source refuses, with the field TikTok's answer names.
REFUSED: dict[str, tuple[str, Any, str]] = {
    "web": ("lead", {"lead_id": "1"}, "data[0].lead"),
    "app": ("page", {"url": "https://shop.example.com/"}, "data[0].page"),
    "offline": ("event", "StoreVisit", "data[0].event"),
    "crm": ("user", {"email": SHA, "ttp": "Qm4tZr8LwP2vN6cXy0HbJ3sKdAe"}, "data[0].user.ttp"),
}


def a_request(source: str, event_id: str = "e-1", **change: Any) -> dict[str, Any]:
    spec = dict(REQUESTS[source], **change)
    event = {k: v for k, v in spec.items() if k != "event_source_id"}
    event.update(event_time=int(time.time()) - 60, event_id=event_id)
    return {"event_source": source, "event_source_id": spec["event_source_id"], "data": [event]}


def post(sandbox: Sandbox, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        sandbox.url + TRACK_PATH,
        content=orjson.dumps(body),
        headers={"Access-Token": TOKEN, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("source", list(REQUESTS))
def test_the_sandbox_accepts_each_sources_own_fields_and_keeps_the_source(
    sandbox: Sandbox, source: str
) -> None:
    body = a_request(source)
    answer = post(sandbox, body)
    assert answer["code"] == 0, answer["message"]
    (stored,) = sandbox.events()
    assert (stored["event_source"], stored["pixel"]) == (source, body["event_source_id"])
    assert stored["event"] == body["data"][0]
    assert sandbox.stats()["events"]["by_source"] == {source: 1}


@pytest.mark.parametrize("source", list(REFUSED))
def test_the_sandbox_refuses_a_field_the_source_does_not_take(
    sandbox: Sandbox, source: str
) -> None:
    field, value, named = REFUSED[source]
    answer = post(sandbox, a_request(source, **{field: value}))
    assert answer["code"] == 40002
    assert answer["message"].startswith(f"Invalid value for {named}: ")
    assert sandbox.events() == []


def crm_transformer(tmp_path: Path, **overrides: Any) -> Transformer:
    """config/examples/crm-leads.yaml as shipped, pointed at this repository's schemas."""
    raw = yaml.safe_load(CRM_EXAMPLE.read_text())
    raw["schemas_dir"] = str(SCHEMAS)
    raw.update(overrides)
    path = tmp_path / "crm-leads.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    _, transformer, _ = load_pipeline(path, clock=time.time, environ={})
    return transformer


def a_lead(change_id: str, stage: str = "qualified") -> dict[str, Any]:
    return {
        "change_id": change_id,
        "updated_at": int(time.time()) - 60,
        "lead": {"id": "7300000000000000001", "stage": stage, "system": "Salesforce"},
        "contact": {
            "id": "contact-8841",
            "email": "Jane.Doe@example.com",
            "phone": "+447700900123",
        },
    }


def test_a_crm_lead_from_the_example_is_sent_by_the_sender_and_accepted(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    transformer = crm_transformer(tmp_path)
    result = transformer.transform("crm.leads", 0, 0, orjson.dumps(a_lead("chg-1")))
    (event,) = result.events
    batch = Batch(batch_key(event), [PendingEvent.of(0, event)])
    config = TikTokConfig(
        PIXEL, AccessToken("TIKTOK_ACCESS_TOKEN", Secret(TOKEN), None), endpoint=sandbox.endpoint
    )
    delivery = DeliveryConfig(max_retries=3, backoff_initial_ms=10, request_timeout_s=5.0)
    sender = Sender(config, delivery, Metrics(), rng=random.Random(7))
    sender.start()
    try:
        sender.submit(batch)
        (done,) = outcomes(sender, 1)
    finally:
        sender.close(5.0)
    assert done.rejected == []
    assert [item.ref for item in done.accepted] == [0]
    (stored,) = sandbox.events()
    assert (stored["event_source"], stored["pixel"]) == ("crm", CRM_SET)
    assert stored["event"]["event"] == "QualifiedLead"
    assert stored["event"]["lead"] == {
        "lead_id": "7300000000000000001",
        "lead_event_source": "Salesforce",
    }
    assert stored["event"]["user"]["email"] == SHA
    assert sandbox.stats()["requests"]["by_code"] == {"0": 1}


def test_a_crm_lead_from_kafka_reaches_the_crm_event_set(
    make_pipeline: MakePipeline,
    new_topic: TopicFactory,
    processors: Callable[..., ProcessorProcess],
    sandbox: Sandbox,
) -> None:
    pipeline = make_pipeline(partitions=1)
    leads = new_topic(partitions=1)
    raw = yaml.safe_load(pipeline.config_path.read_text())
    for mapping in yaml.safe_load(CRM_EXAMPLE.read_text())["mappings"]:
        raw["mappings"].append(dict(mapping, topic=leads))
    pipeline.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    records = [a_lead("chg-1"), a_lead("chg-2", stage="converted"), a_lead("chg-3", "lost")]
    produce(pipeline.bootstrap, leads, [(None, orjson.dumps(r)) for r in records])
    processor = processors(pipeline)
    wait_for(lambda: len(sandbox.events()) == 2, 60, "both CRM lead events accepted")
    stored = sorted(sandbox.events(), key=lambda e: e["event"]["event_id"])
    assert [(e["event_source"], e["pixel"], e["event"]["event"]) for e in stored] == [
        ("crm", CRM_SET, "QualifiedLead"),
        ("crm", CRM_SET, "ConvertedLead"),
    ]
    assert {e["event"]["lead"]["lead_id"] for e in stored} == {"7300000000000000001"}
    wait_for(
        lambda: committed_offsets(pipeline.bootstrap, pipeline.group, leads) == {0: 3},
        30,
        "the lead topic committed past every record (the lost lead filtered)",
    )
    processor.terminate()
    assert processor.wait(30) == 0, processor.log()
    assert dead_letters(pipeline) == []
    assert sandbox.stats()["requests"]["by_code"].keys() == {"0"}
